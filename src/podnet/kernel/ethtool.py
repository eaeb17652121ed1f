"""Offload features of an interface through the ethtool ioctl (for hosts without
ethtool(8), and for namespaces: read from a thread that joined the namespace)."""

from __future__ import annotations

from collections.abc import Iterable

from podnet.kernel import netns as kns


def features(netns: str, dev: str, names: Iterable[str]) -> dict[str, str]:
    """{feature: "on" | "off"} of `dev` in `netns`, only for `names`."""
    wanted = set(names)

    def read() -> dict[str, str]:
        from pyroute2.ethtool import Ethtool

        eth = Ethtool()
        try:
            feats = eth.get_features(dev).features
            return {k: ("on" if f.enable else "off") for k, f in feats.items() if k in wanted}
        finally:
            eth.close()

    return dict(kns.run_in(netns, read))
