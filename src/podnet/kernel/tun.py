"""TUN devices for the `udp` backend: the ioctl side (open/create) and the netlink side.

Why two halves: a TUN device cannot be created over rtnetlink (the kernel answers
EOPNOTSUPP), only by opening /dev/net/tun and TUNSETIFF, and the device lands in the
namespace of the *thread* doing that. So creation runs in a throwaway thread that joined
the namespace (`netns.run_in`), while address, MTU and routes go through pyroute2 like
every other kernel helper. The ioctl half imports nothing heavy: the forwarder process
uses `open_tun` without paying for pyroute2.

The device is made persistent, so it outlives the forwarder holding it open: a crashed or
restarted forwarder re-attaches and the addresses and routes the driver set stay put.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8

IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

# The flags every podnet TUN is opened with: L3 packets, no packet-info prefix, and a
# virtio-net header in front of each packet so the kernel can hand over (and accept)
# unsegmented, checksum-pending super-packets.
TUN_FLAGS = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR
# virtio_net_hdr_v1 (12 bytes, with num_buffers): keeps the IP header 4-byte aligned.
VNET_HDR_LEN = 12
# Outer IPv4 (20) + UDP (8): the TUN MTU is the underlay MTU minus this.
UDP_OVERHEAD = 28
_IFNAMSIZ = 16


def tun_mtu(underlay_mtu: int) -> int:
    """MTU of the TUN device (and UDP payload size per datagram) for an underlay MTU."""
    return underlay_mtu - UDP_OVERHEAD


def _ifreq(name: str, flags: int) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= _IFNAMSIZ:
        raise ValueError(f"bad interface name {name!r}")
    return struct.pack("16sH22x", raw, flags)


def open_tun(name: str, offload: int = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
             persist: bool = True) -> int:
    """Open (creating if absent) the TUN device `name` in the caller's namespace.

    Returns the fd. Flags are TUN_FLAGS; the offloads let the kernel pass ~64 KB GSO
    packets with a VNET_HDR_LEN-byte virtio-net header. EBUSY means another process
    holds the (single-queue) device; EINVAL/EPERM that `name` is not a TUN we can use.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, TUN_FLAGS))
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        fcntl.ioctl(fd, TUNSETOFFLOAD, offload)
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except BaseException:
        os.close(fd)
        raise
    return fd


def set_persist(fd: int, persist: bool) -> None:
    """Clear persistence to have the device vanish when its last fd closes."""
    fcntl.ioctl(fd, TUNSETPERSIST, 1 if persist else 0)


# --- netlink side (pyroute2), for the driver -----------------------------------------


def _create_persistent(name: str) -> None:
    fd = open_tun(name, persist=True)
    os.close(fd)


def _link_index(ipr, name: str) -> int | None:  # type: ignore[no-untyped-def]
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _link_kind(ipr, index: int) -> str | None:  # type: ignore[no-untyped-def]
    link = ipr.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def ensure_tun(netns: str | None, name: str) -> int:
    """A persistent TUN device `name` exists in `netns` (None: own namespace); its ifindex.

    Fails loudly if `name` exists but is not a TUN device. Creating it here (rather than
    leaving it to the forwarder) lets the driver set address and routes first.
    """
    from podnet.errors import KERNEL_FAILURE, PodnetError
    from podnet.kernel import netns as pn_netns

    with pn_netns.iproute(netns) as ipr:
        index = _link_index(ipr, name)
        if index is not None:
            kind = _link_kind(ipr, index)
            if kind != "tun":
                raise PodnetError(KERNEL_FAILURE, f"{name} already exists but is not a tun",
                                  f"kind={kind}")
            return index
    try:
        if netns is None:
            _create_persistent(name)
        else:
            pn_netns.run_in(netns, lambda: _create_persistent(name))
    except OSError as exc:
        # EBUSY: a forwarder raced us and holds it open; that is a TUN too.
        if exc.errno != errno.EBUSY:
            raise PodnetError(KERNEL_FAILURE, f"cannot create tun {name}", str(exc)) from exc
    with pn_netns.iproute(netns) as ipr:
        index = _link_index(ipr, name)
    if index is None:
        raise PodnetError(KERNEL_FAILURE, f"tun {name} vanished after creation")
    return index


def ensure_tun_link(netns: str | None, name: str, mtu: int) -> None:
    """The TUN device has this MTU and is administratively up."""
    from podnet.errors import NOT_FOUND, PodnetError
    from podnet.kernel import netns as pn_netns

    with pn_netns.iproute(netns) as ipr:
        index = _link_index(ipr, name)
        if index is None:
            raise PodnetError(NOT_FOUND, f"tun {name} does not exist")
        ipr.link("set", index=index, mtu=mtu, state="up")


def ensure_tun_address(netns: str | None, name: str, address: str) -> None:
    """The TUN device carries exactly this IPv4/IPv6 address (CIDR); others of its family go."""
    from pyroute2 import NetlinkError

    from podnet.errors import NOT_FOUND, PodnetError
    from podnet.kernel import netns as pn_netns

    iface = ipaddress.ip_interface(address)
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    with pn_netns.iproute(netns) as ipr:
        index = _link_index(ipr, name)
        if index is None:
            raise PodnetError(NOT_FOUND, f"tun {name} does not exist")
        present = False
        for msg in ipr.get_addr(index=index, family=family):
            ip = msg.get_attr("IFA_ADDRESS")
            plen = msg["prefixlen"]
            if ip == str(iface.ip) and plen == iface.network.prefixlen:
                present = True
            elif family == socket.AF_INET6 and ipaddress.ip_address(ip).is_link_local:
                continue
            else:
                ipr.addr("del", index=index, address=ip, prefixlen=plen)
        if not present:
            try:
                ipr.addr("add", index=index, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise


def ensure_cluster_route(netns: str | None, name: str, cluster_cidr: str,
                         src: str | None = None) -> None:
    """Route the whole cluster CIDR into the TUN device (replace: idempotent).

    `src` (normally the TUN's own address) becomes the preferred source, so the host's
    own traffic to remote pods carries an address the other hosts route back over the
    overlay. Routes to local pods are more specific and win.
    """
    from podnet.errors import NOT_FOUND, PodnetError
    from podnet.kernel import netns as pn_netns

    net = ipaddress.ip_network(cluster_cidr)
    with pn_netns.iproute(netns) as ipr:
        index = _link_index(ipr, name)
        if index is None:
            raise PodnetError(NOT_FOUND, f"tun {name} does not exist")
        kwargs: dict = {"dst": str(net.network_address), "dst_len": net.prefixlen,
                        "oif": index, "scope": 253}
        if net.version == 6:
            kwargs["family"] = socket.AF_INET6
        if src:
            kwargs["prefsrc"] = src
        ipr.route("replace", **kwargs)


def remove_cluster_route(netns: str | None, name: str, cluster_cidr: str) -> None:
    """Remove the cluster route through the TUN device; tolerates its absence."""
    from pyroute2 import NetlinkError

    from podnet.kernel import netns as pn_netns

    net = ipaddress.ip_network(cluster_cidr)
    with pn_netns.iproute(netns) as ipr:
        index = _link_index(ipr, name)
        if index is None:
            return
        kwargs: dict = {"dst": str(net.network_address), "dst_len": net.prefixlen,
                        "oif": index}
        if net.version == 6:
            kwargs["family"] = socket.AF_INET6
        try:
            ipr.route("del", **kwargs)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                raise


def ensure_tun_setup(netns: str | None, name: str, address: str, mtu: int,
                     cluster_cidr: str) -> int:
    """All of it in order: device, MTU + up, address, cluster route. Returns the ifindex."""
    index = ensure_tun(netns, name)
    ensure_tun_link(netns, name, mtu)
    ensure_tun_address(netns, name, address)
    ensure_cluster_route(netns, name, cluster_cidr,
                         src=str(ipaddress.ip_interface(address).ip))
    return index


def remove_tun(netns: str | None, name: str) -> None:
    """Delete the TUN device (its addresses and routes go with it); tolerates absence.

    A forwarder still holding it open keeps running but its reads fail until stopped.
    """
    from pyroute2 import NetlinkError

    from podnet.kernel import netns as pn_netns

    if netns is not None and not pn_netns.exists(netns):
        return
    with pn_netns.iproute(netns) as ipr:
        index = _link_index(ipr, name)
        if index is None:
            return
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise
