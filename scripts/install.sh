#!/usr/bin/env bash
# Install podnet and everything it uses on a fresh Debian 12 machine (run as root).
#   scripts/install.sh         runtime dependencies + podnet in /opt/podnet/venv
#   scripts/install.sh --test  also what the test suite needs (container runtimes, etcd)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${PODNET_VENV:-/opt/podnet/venv}
export DEBIAN_FRONTEND=noninteractive

APT=(python3 python3-venv python3-pip iproute2 iputils-ping nftables conntrack iptables
     iperf3 sockperf ethtool etcd-server containernetworking-plugins util-linux procps
     docker.io busybox-static)  # docker.io + busybox-static: `podnet lab up --docker`
if [[ "${1:-}" == "--test" ]]; then
    APT+=(containerd podman runc)
fi
missing=()
for pkg in "${APT[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt-get update -qq
    # etcd-server's and docker.io's packages would start a system etcd and dockerd; podnet
    # starts its own, and never uses or touches the machine's. Only a policy-rc.d we
    # created is removed again; an existing one must forbid starting those services.
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    else
        for pair in etcd-server:etcd docker.io:docker; do
            pkg=${pair%%:*} svc=${pair#*:} rc=0
            [[ " ${missing[*]} " == *" $pkg "* ]] || continue
            /usr/sbin/policy-rc.d "$svc" start >/dev/null 2>&1 || rc=$?
            if [[ $rc != 101 ]]; then
                echo "install.sh: /usr/sbin/policy-rc.d allows starting $svc: installing" \
                     "$pkg would start a system service (make it exit 101 first)" >&2
                exit 1
            fi
        done
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ $own_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q -e "$REPO[test]"
ln -sf "$VENV/bin/podnet" /usr/local/bin/podnet
"$VENV/bin/podnet" install-cni --dir /opt/cni/bin >/dev/null
echo "podnet installed: $VENV (podnet, /opt/cni/bin/podnet-cni)"
