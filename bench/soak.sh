#!/usr/bin/env bash
# Soak of the release binaries on loopback (no root needed): a collector and
# two honest agents for MINUTES (default 60) with a flapping service paging
# through a webhook, collector restarts every 10 min (SIGTERM, SIGKILL in
# turn), agent restarts every 7 min, a hostile node pushing at and over its
# quotas and a slow-header client on the HTTP port (tests/src/bin/tw-soak.rs).
# Prints the collector's RSS (after warm-up, peak, end), the honest batches
# (each stored exactly once) and the pages (none twice); exits non-zero on a
# failed check. RSS every 5 s goes to target/soak-rss.csv.
# Usage: bench/soak.sh [MINUTES]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
minutes="${1:-60}"
cargo build --release --locked --bins -q --manifest-path "$root/Cargo.toml"
cd "$root"
TW_BIN_DIR="$root/target/release" "$root/target/release/tw-soak" "$minutes"
