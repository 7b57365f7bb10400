#!/usr/bin/env bash
# The load-test matrix of the README's results table: portcullis-load against the memory and
# the Redis store, one and three replicas, for check, envoy-rls and verify; plus
# redis-benchmark's ceiling for the same Lua script, in the same run.
# Usage: cargo build --release -p portcullis-server -p portcullis-loadtest && bench/load-matrix.sh
# Env: DURATION (10s), WARMUP (3s), CONCURRENCY (128 = 8 connections x 16 streams).
# Needs redis-server, redis-benchmark and python3; uses ports 6391 and 50071-50076.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
B=$root/target/release/portcullis
L=$root/target/release/portcullis-load
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONCURRENCY=${CONCURRENCY:-128}
work=$(mktemp -d)
cd "$work"
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
printf '%s' "$secret" > jwt-secret
chmod 600 jwt-secret
python3 "$root/bench/mint_token.py" "$secret" > tokens.txt
cat > bench.yaml <<'YAML'
domain: bench
descriptors:
  - key: tenant
    descriptors:
      - key: key
        rate_limit: { unit: second, requests_per_unit: 1000000 }
YAML
redis-server --port 6391 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$work" >/dev/null
until redis-cli -p 6391 ping >/dev/null 2>&1; do sleep 0.1; done

start() { # port, store args...
  local port=$1; shift
  JWT_SECRET_KEY_FILE=$work/jwt-secret "$B" --listen 127.0.0.1:$port --metrics-listen off \
    --default-limit 1000000/1s --envoy-config bench.yaml "$@" > "server-$port.log" 2>&1 &
}
load() { # label, scenario, targets...
  local label=$1 scenario=$2; shift 2
  local targets=()
  for t in "$@"; do targets+=(--target "http://127.0.0.1:$t"); done
  local extra=()
  case $scenario in
    envoy-rls) extra=(--domain bench) ;;
    verify) extra=(--token-file tokens.txt) ;;
  esac
  printf '%-28s ' "$label"
  "$L" "${targets[@]}" --scenario "$scenario" "${extra[@]}" --concurrency "$CONCURRENCY" \
    --connections 8 --tenants 100 --keys 1000 --duration "$DURATION" --warmup "$WARMUP" \
    --json "$label.json" > /dev/null 2>&1
  python3 - "$label.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
lat, errors = s["latency_us"], s["errors"]
codes = ",".join(f"{k}={v}" for k, v in errors["by_code"].items())
print(f"{s['throughput_rps']:>10,.0f}/s  p50 {lat['p50']} µs  p99 {lat['p99']} µs  "
      f"p99.9 {lat['p99.9']} µs  errors {errors['total']} {codes}")
PY
}

start 50071
start 50072 --redis-url redis://127.0.0.1:6391
start 50073 --redis-url redis://127.0.0.1:6391
start 50074 --redis-url redis://127.0.0.1:6391
sleep 1.5
for scenario in check envoy-rls verify; do
  load "memory 1x $scenario" "$scenario" 50071
  load "redis 1x $scenario" "$scenario" 50072
  load "redis 3x $scenario" "$scenario" 50072 50073 50074
done
# Three replicas on the memory store would each count alone (not a shared limit), so that
# row is left out: the memory store is for a single replica.

SHA=$(redis-cli -p 6391 SCRIPT LOAD "$(cat "$root/server/src/store/redis/scripts/gcra.lua")")
printf '%-28s ' "redis-benchmark P16"
redis-benchmark -p 6391 -n 400000 -P 16 -c 8 -q EVALSHA "$SHA" 1 'rl:{bench}:default:k1' 1 1 1 1000000 1 1 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -1
printf '%-28s ' "redis-benchmark P1"
redis-benchmark -p 6391 -n 200000 -c 8 -q EVALSHA "$SHA" 1 'rl:{bench}:default:k1' 1 1 1 1000000 1 1 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -1

kill $(jobs -p) 2>/dev/null
wait 2>/dev/null
redis-cli -p 6391 shutdown nosave >/dev/null
rm -rf "$work"
