"""The only code that touches netlink, nftables, sysctls and bpf(2).

Every helper does one idempotent thing: ensure_* creates or repairs an object and
verifies it is what we need, remove_* tolerates absence.
"""
