#!/usr/bin/env bash
# 1,000 ICMP targets, 20 echo requests per target per minute, from one lab
# commune through its WAN link, as root: tierwatch-agent (release, pushing to
# a collector), `fping -l -p 3000` (the efficient reference) and
# prometheus-blackbox-exporter driven by Prometheus at a 3 s scrape interval.
# Prints CPU (cores), RSS and peak RSS of each, and the ratios.
# Usage: bench/icmp-1000.sh [SECONDS [agent|fping|blackbox]]
#   SECONDS: measurement window per tool (default 120); a tool name runs only that one.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
for tool in fping prometheus prometheus-blackbox-exporter ethtool; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install fping prometheus prometheus-blackbox-exporter ethtool" >&2; exit 1; }
done
cargo build --release --locked --bins -q --manifest-path "$root/Cargo.toml"
TW_BIN_DIR="$root/target/release" "$root/target/release/tw-lab-bench" icmp1000 "${1:-120}" ${2:-}
