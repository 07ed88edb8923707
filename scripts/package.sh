#!/usr/bin/env bash
# Builds the Debian packages of the agent and the collector (release
# binaries) into target/debian/. Installs cargo-deb when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install --locked cargo-deb --version "^3" --no-default-features
fi
cargo build --locked --release -p tierwatch-agent -p tierwatch-collector
for p in tierwatch-agent tierwatch-collector; do
  cargo deb --no-build -p "$p" --output target/debian/
done
ls -l target/debian/*.deb
