#!/usr/bin/env bash
# The anchors portway is measured against (Debian packages), installed for `make bench` only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/apt-ensure.sh netavark aardvark-dns containernetworking-plugins iptables iperf3 dnsperf
