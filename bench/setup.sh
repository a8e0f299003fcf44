#!/usr/bin/env bash
# The anchors portway is measured against (Debian packages), installed for `make bench` only.
set -euo pipefail
PACKAGES="netavark containernetworking-plugins iptables"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q $missing >/dev/null
fi
