#!/usr/bin/env bash
# README command 1: a collector and four agents of the sample province (An Giang)
# on loopback, with a throw-away PKI. No root, no external service. Ctrl-C stops all.
#
# Environment (all optional):
#   TW_BIN_DIR            use binaries from this folder instead of building (tests use it)
#   TW_DEMO_INGEST_PORT   collector ingest port (7443)
#   TW_DEMO_HTTP_PORT     collector HTTP port (9400)
#   TW_DEMO_AGENT_PORT    first agent health port (9401; the others follow; 0 = any free port)
#   TW_DEMO_SECONDS       stop by itself after this many seconds
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
ingest_port="${TW_DEMO_INGEST_PORT:-7443}"
http_port="${TW_DEMO_HTTP_PORT:-9400}"
agent_port="${TW_DEMO_AGENT_PORT:-9401}"
seconds="${TW_DEMO_SECONDS:-}"

if [ -n "${TW_BIN_DIR:-}" ]; then
  bin="$TW_BIN_DIR"
else
  if ! command -v cargo >/dev/null 2>&1; then
    echo "demo: cargo is not installed; install the Rust toolchain (rustup) first" >&2
    exit 1
  fi
  echo "Building tierwatch (release)..."
  (cd "$root" && cargo build --release --locked --bins -q)
  bin="$root/target/release"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/tierwatch-demo.XXXXXX")"
pids=()
cleanup() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  rm -rf "$work"
  echo "demo stopped; everything cleaned up."
}
trap cleanup EXIT
trap 'exit 130' INT TERM

collector="$bin/tierwatch-collector"
agent="$bin/tierwatch-agent"

# A throw-away CA, the collector's server certificate, one certificate per node.
"$collector" pki init --dir "$work/pki" --days 2 >/dev/null
"$collector" pki issue --dir "$work/pki" --node collector --server --san 127.0.0.1 --san localhost --days 2 >/dev/null
nodes=(an-giang nui-cam giang-thanh phu-quoc)
for n in "${nodes[@]}"; do
  "$collector" pki issue --dir "$work/pki" --node "$n" --days 2 >/dev/null
done

cp "$root/config/topology.yaml" "$work/topology.yaml"
# The API token, as the package makes one: changes through the API take it.
"$collector" api-token --out "$work/api.token" >/dev/null
cat > "$work/collector.yaml" <<YAML
topology: topology.yaml
ingest:
  listen: 127.0.0.1:$ingest_port
  ca: pki/ca.crt
  cert: pki/collector.crt
  key: pki/collector.key
http:
  listen: 127.0.0.1:$http_port
node_down_after: 15s
stale_after: 1m
state_dir: state
api:
  token_file: api.token
YAML

# Loopback stands in for each node's WAN: 127.0.0.1 plays the provincial
# gateway, the collector's HTTP port a provincial service. Phú Quốc also
# probes a service that is down (a closed port), to show a failure.
i=0
for n in "${nodes[@]}"; do
  extra=""
  if [ "$n" = phu-quoc ]; then
    extra="
  - name: dichvucong-angiang
    probe: tcp
    host: 127.0.0.1
    port: 9"
  fi
  cat > "$work/$n.yaml" <<YAML
node: $n
collector:
  endpoints: ["https://127.0.0.1:$ingest_port"]
  ca: pki/ca.crt
  cert: pki/$n.crt
  key: pki/$n.key
  push_interval: 2s
spool:
  dir: spool/$n
health:
  listen: 127.0.0.1:$([ "$agent_port" = 0 ] && echo 0 || echo $((agent_port + i)))
defaults:
  interval: 5s
  timeout: 1s
  icmp_count: 5
targets:
  - name: provincial-gateway
    probe: icmp
    host: 127.0.0.1
  - name: provincial-portal
    probe: tcp
    host: 127.0.0.1
    port: $http_port$extra
YAML
  i=$((i + 1))
done

"$collector" --config "$work/collector.yaml" 2> "$work/collector.log" &
pids+=($!)
for _ in $(seq 1 50); do
  "$collector" status --url "http://127.0.0.1:$http_port" >/dev/null 2>&1 && break
  sleep 0.1
done
for n in "${nodes[@]}"; do
  "$agent" --config "$work/$n.yaml" 2> "$work/$n.log" &
  pids+=($!)
done

cat <<TXT

tierwatch demo: collector + ${#nodes[@]} agents of An Giang on loopback
  collector ingest (mTLS):  127.0.0.1:$ingest_port
  Prometheus metrics:       http://127.0.0.1:$http_port/metrics
  nodes (JSON):             http://127.0.0.1:$http_port/api/v1/nodes
  agent health:             http://127.0.0.1:$agent_port/healthz (and the next ports)
  node table any time:      $collector status --url http://127.0.0.1:$http_port
  API token (changes):      $work/api.token (Authorization: Bearer ...)
  logs:                     $work/*.log
TXT
if ! grep -q "ICMP engine ready" "$work"/*.log 2>/dev/null; then
  sleep 1
fi
if grep -q "ICMP probes cannot run" "$work/nui-cam.log" 2>/dev/null; then
  echo "  note: ICMP needs CAP_NET_RAW or net.ipv4.ping_group_range; the agents log exactly what to grant"
fi

# Wait for the first pushes (every agent starts its probes at a random phase).
for _ in $(seq 1 60); do
  up=$("$collector" status --url "http://127.0.0.1:$http_port" 2>/dev/null | grep -c " UP " || true)
  [ "$up" -ge "${#nodes[@]}" ] && break
  sleep 0.25
done
sleep 6
echo
echo "What the operator sees (tierwatch-collector status):"
"$collector" status --url "http://127.0.0.1:$http_port"
echo
if [ -n "$seconds" ]; then
  sleep "$seconds"
else
  echo "Running; press Ctrl-C to stop."
  wait "${pids[0]}"
fi
