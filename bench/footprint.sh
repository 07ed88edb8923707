#!/usr/bin/env bash
# Footprint of the release binaries on loopback: collector RSS idle, then one
# agent with 10 targets (5 ICMP rounds of 20 echoes, 5 TCP connects, every 5 s,
# pushing every 10 s) for DURATION seconds: its RSS, peak RSS and CPU share.
# Run as root (or with CAP_NET_RAW) so the ICMP targets really ping.
# Usage: bench/footprint.sh [DURATION]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
duration="${1:-60}"
cargo build --release --locked --bins -q --manifest-path "$root/Cargo.toml"
bin="$root/target/release"
work="$(mktemp -d)"
pids=()
trap 'kill ${pids[*]} 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

c="$bin/tierwatch-collector"
$c pki init --dir "$work/pki" >/dev/null
$c pki issue --dir "$work/pki" --node collector --server --san 127.0.0.1 >/dev/null
$c pki issue --dir "$work/pki" --node nui-cam >/dev/null
cp "$root/config/topology.yaml" "$work/"
ingest=$(port); http=$(port); health=$(port)
printf 'topology: topology.yaml\ningest:\n  listen: 127.0.0.1:%s\n  ca: pki/ca.crt\n  cert: pki/collector.crt\n  key: pki/collector.key\nhttp:\n  listen: 127.0.0.1:%s\nstate_dir: state\n' "$ingest" "$http" > "$work/collector.yaml"
{
  printf 'node: nui-cam\ncollector:\n  endpoints: ["https://127.0.0.1:%s"]\n  ca: pki/ca.crt\n  cert: pki/nui-cam.crt\n  key: pki/nui-cam.key\n  push_interval: 10s\nspool:\n  dir: spool\n' "$ingest"
  printf 'health:\n  listen: 127.0.0.1:%s\ndefaults:\n  interval: 5s\n  timeout: 1s\n  icmp_count: 20\ntargets:\n' "$health"
  for i in 1 2 3 4 5; do printf '  - {name: gw-%s, probe: icmp, host: 127.0.0.%s}\n' "$i" "$i"; done
  for i in 1 2 3 4 5; do printf '  - {name: svc-%s, probe: tcp, host: 127.0.0.1, port: %s}\n' "$i" "$http"; done
} > "$work/agent.yaml"

RUST_LOG=warn $c --config "$work/collector.yaml" 2>"$work/collector.log" & pids+=($!); cpid=$!
sleep 3
echo "collector idle: RSS $(rss_kb $cpid) kB"
RUST_LOG=warn "$bin/tierwatch-agent" --config "$work/agent.yaml" 2>"$work/agent.log" & pids+=($!); apid=$!
sleep 5
hz=$(getconf CLK_TCK)
a0=$(cpu_ticks $apid); c0=$(cpu_ticks $cpid); t0=$(date +%s.%N)
sleep "$duration"
a1=$(cpu_ticks $apid); c1=$(cpu_ticks $cpid); t1=$(date +%s.%N)
wall=$(echo "$t1 - $t0" | bc -l)
printf 'agent, 10 targets, %ss: RSS %s kB, peak RSS %s kB, CPU %.2f%% of one core\n' "$duration" "$(rss_kb $apid)" "$(hwm_kb $apid)" "$(echo "($a1 - $a0) / $hz / $wall * 100" | bc -l)"
printf 'collector with that agent: RSS %s kB, CPU %.2f%% of one core\n' "$(rss_kb $cpid)" "$(echo "($c1 - $c0) / $hz / $wall * 100" | bc -l)"
curl_like() { exec 3<>/dev/tcp/127.0.0.1/"$1"; printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3; cat <&3; exec 3<&-; }
echo "agent pushes: $(curl_like "$health" /metrics | grep '^tierwatch_agent_pushes_total' | tr '\n' ' ')"
grep -c "ICMP engine ready" "$work/agent.log" >/dev/null 2>&1 || true
