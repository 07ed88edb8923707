#!/usr/bin/env bash
# README command 2: installs what the tests need (Debian packages), builds the
# workspace once, and runs the whole test suite. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, by the command each provides.
declare -A wanted=(
  [promtool]=prometheus    # promtool check metrics; remote_write receiver (lab)
  [prometheus-alertmanager]=prometheus-alertmanager  # alert notifier tests
  [ip]=iproute2            # network namespaces, veth, tc (lab tests)
  [ethtool]=ethtool        # lab: checksum offload off on bridged veths
  [fping]=fping            # lab: impairment accuracy, reference measurements
  [ping]=iputils-ping
  [nginx]=nginx            # lab: HTTP/HTTPS services
  [dnsmasq]=dnsmasq-base   # lab: DNS (and DHCP) service
  [nmap]=nmap              # lab: port scans for the LAN sensor
  [radvd]=radvd            # lab: a rogue IPv6 router on a commune LAN
  [hping3]=hping3          # lab: a SYN flood from random spoofed sources
  [arpspoof]=dsniff        # lab: a unicast ARP spoof (a man in the middle)
  [chromium]=chromium      # status page screenshot (headless)
  [debootstrap]=debootstrap  # a clean Debian 12 chroot for the package test
  [setpriv]=util-linux     # the agent as an unprivileged user with CAP_NET_RAW only
  [unshare]=util-linux     # a private mount namespace for a test's own journald
  [nsenter]=util-linux
  [journalctl]=systemd     # the SSH sensor reading the journal (systemd-journald)
  [logger]=bsdutils        # writes that journal's test entries
  [ss]=iproute2
  [kill]=procps
  [sysctl]=procps
)
missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${wanted[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # nginx and prometheus ship services: the tests start their own instances,
  # so keep apt from starting system ones (as container images do).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install the Rust toolchain (rustup) first" >&2
  exit 1
fi

# cargo-deb builds the Debian packages (tests/tests/packages.rs, scripts/package.sh).
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "installing cargo-deb"
  cargo install --locked --quiet cargo-deb --version "^3" --no-default-features
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "NOTE: not root: tests that need network namespaces or raw sockets skip and say so."
fi

# One build of the binaries and the tests in the test profile; the
# whole-system tests run the binaries.
cargo build --locked --workspace --bins
cargo test --locked --workspace --no-run

# The ten-minute outage of the backfill test is mostly waiting: it runs in a
# process of its own beside the rest of the suite (its lab's namespaces are
# its own), not after it. Nothing is built again: both runs find the tests built.
long=backfill_after_a_ten_minute_outage_reaches_prometheus_once
long_log=$(mktemp)
cargo test --locked --workspace --test lab -- --exact "$long" >"$long_log" 2>&1 &
long_pid=$!
status=0
cargo test --locked --workspace --no-fail-fast -- --skip "$long" || status=$?
long_status=0
wait "$long_pid" || long_status=$?
echo "---- $long (run beside the suite) ----"
cat "$long_log"
rm -f "$long_log"
if [ "$long_status" -ne 0 ]; then
  echo "error: $long failed" >&2
  status=1
fi
exit "$status"
