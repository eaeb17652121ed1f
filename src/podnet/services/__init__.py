"""Services: virtual IPs and node ports in front of pods, programmed into nftables."""
