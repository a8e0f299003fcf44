#!/usr/bin/env bash
# Everything portway needs on a fresh Debian 12 machine, as root: system packages,
# a virtual environment with portway and its test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (portway creates namespaces, links and firewall rules)" >&2
  exit 1
fi

# System packages: iproute2 (the tests' oracle, `ip -j`), nftables/libnftables1
# (the firewall), python3-venv, procps, bind9-dnsutils (dig), graphviz (`portway graph`),
# podman, runc and busybox-static (the Podman backend tests run real Podman), conntrack
# (tests read the flows the kernel tracks), zsh (its completion script is tested);
# uidmap, slirp4netns and fuse-overlayfs: rootless Podman, which the tests run for a user
# they make; etcd-server and etcd-client: the cluster store of overlay networks (the tests
# start their own etcd, in a namespace of theirs).
had_etcd=$(dpkg-query -W -f='${Status}' etcd-server 2>/dev/null || true)
bash scripts/apt-ensure.sh python3 python3-venv iproute2 nftables libnftables1 procps \
  bind9-dnsutils graphviz podman runc busybox-static conntrack zsh uidmap slirp4netns \
  fuse-overlayfs etcd-server etcd-client
# Installed just now on a machine run by systemd, Debian's package starts its own etcd on
# localhost:2379: portway needs none (the tests start theirs), so that one is stopped.
if [ "$had_etcd" != "install ok installed" ] && [ -d /run/systemd/system ]; then
  systemctl disable --now etcd.service >/dev/null 2>&1 || true
fi

# Debian's own interpreter (what users run as root), not a shim on PATH.
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'

bash scripts/launcher.sh
# Shell completion (bash, zsh), generated from the CLI's command table; bash loads it
# through the bash-completion package, where that is installed (not by default).
bash scripts/install-completion.sh
# Byte-code written now: a CLI call then never compiles a module, even where
# PYTHONDONTWRITEBYTECODE keeps Python from writing it at first use.
.venv/bin/python -m compileall -q src >/dev/null
echo "setup: ready (.venv/bin/portway)"
