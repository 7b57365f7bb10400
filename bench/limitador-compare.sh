#!/usr/bin/env bash
# Side by side with Kuadrant's limitador (limitador-server, built from source): the
# ShouldRateLimit h2load line of h2load-matrix.sh against limitador (memory, redis,
# redis_cached) and Portcullis (memory, Redis), one server at a time so they never share the
# cores, RUNS times each; redis-benchmark's ceiling for Portcullis's Lua script in the same run;
# then, when portcullis-load is built, an exactness check: 100 per 60 s on one fresh key, hammered
# by 8 connections x 16 streams, admitted vs. the limit.
# Usage: bench/limitador-compare.sh LIMITADOR_SERVER [PORTCULLIS [PORTCULLIS_LOAD]]
#   (defaults: target/release/portcullis, target/release/portcullis-load)
# Env: RUNS (3) h2load runs per server; EXACT_DURATION (2s) of each exactness run.
# Needs h2load (nghttp2-client), redis-server, redis-benchmark and python3; uses ports 6397
# (Redis) and 50101-50102 (the server under test, its HTTP port).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ]; then
  echo "usage: $0 LIMITADOR_SERVER [PORTCULLIS [PORTCULLIS_LOAD]]" >&2
  exit 2
fi
LIM=$(realpath "$1")
B=$(realpath "${2:-$root/target/release/portcullis}")
L=$(realpath "${3:-$root/target/release/portcullis-load}" 2>/dev/null || true)
RUNS=${RUNS:-3}
EXACT_DURATION=${EXACT_DURATION:-2s}
REDIS_PORT=6397
PORT=50101
HTTP_PORT=50102
work=$(mktemp -d)
cd "$work"
export JWT_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

# The request body of h2load-matrix.sh (domain "bench", one descriptor client=c1, hits_addend
# 1) and bench.yaml, Portcullis's limit for it: 1,000,000 per second per client value.
python3 "$root/bench/bodies.py"
# The same limit in limitador's format.
cat > limits.yaml <<'YAML'
- namespace: bench
  max_value: 1000000
  seconds: 1
  conditions: []
  variables:
    - descriptors[0].client
YAML
# Exactness: 100 per 60 s per (tenant, key), the descriptor portcullis-load sends.
cat > exact.yaml <<'YAML'
domain: bench
descriptors:
  - key: tenant
    descriptors:
      - key: key
        rate_limit: { unit: minute, requests_per_unit: 100 }
YAML
cat > limits-exact.yaml <<'YAML'
- namespace: bench
  max_value: 100
  seconds: 60
  conditions: []
  variables:
    - descriptors[0].tenant
    - descriptors[0].key
YAML

redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --dir "$work" >/dev/null
until redis-cli -p $REDIS_PORT ping >/dev/null 2>&1; do sleep 0.1; done
REDIS=redis://127.0.0.1:$REDIS_PORT

server=
start() { # name, config file, then the store: memory | redis | redis_cached
  local name=$1 config=$2 store=$3
  redis-cli -p $REDIS_PORT flushall >/dev/null
  case $name in
    limitador)
      local args=("$store")
      [ "$store" != memory ] && args+=("$REDIS")
      "$LIM" -b 127.0.0.1 -p $PORT -B 127.0.0.1 -P $HTTP_PORT "$config" "${args[@]}" \
        > "$name-$store.log" 2>&1 &
      ;;
    portcullis)
      local args=()
      [ "$store" = redis ] && args+=(--redis-url "$REDIS")
      "$B" --listen 127.0.0.1:$PORT --metrics-listen off --default-limit 1000000/1s \
        --envoy-config "$config" "${args[@]}" > "$name-$store.log" 2>&1 &
      ;;
  esac
  server=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name $store did not start:" >&2
  tail -5 "$name-$store.log" >&2
  return 1
}
stop() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  server=
}
run() { # one h2load line: calls/s, time for request (mean, sd, max), percentiles from its log
  rm -f requests.log # h2load appends to it
  h2load -D 8 -c 8 -m 16 -t 1 --warm-up-time=1 --log-file=requests.log -d rls.bin \
    -H 'content-type: application/grpc' \
    -H 'te: trailers' http://127.0.0.1:$PORT/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit \
    2>&1 | awk '/^finished in/ { rps = $4 }
                /^requests:/ { ok = $8; failed = $10 }
                /^time for request:/ { min = $4; max = $5; mean = $6; sd = $7 }
                END { printf "%10s req/s  mean %7s  sd %7s  max %7s  (%s ok, %s failed)  ",
                             rps, mean, sd, max, ok, failed }'
  python3 "$root/bench/latency.py" requests.log
}
exact() { # one exactness run against the running server
  "$L" --target http://127.0.0.1:$PORT --scenario envoy-rls --domain bench --tenants 1 --keys 1 \
    --concurrency 128 --connections 8 --duration "$EXACT_DURATION" --warmup 0s \
    --verify-limit 100/1m --json exact.json > /dev/null 2>&1
  python3 - exact.json <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d, c, e = s["decisions"], s["correctness"], s["errors"]
print(f"{s['requests']:>7} calls  admitted {d['allowed']:>4} (limit 100)  denied {d['denied']:>6}  "
      f"unknown {d['unknown']}  errors {e['total']}  over-admitted (GCRA bound) {c['over_admitted']}")
PY
}

configs=("limitador memory" "limitador redis" "limitador redis_cached" "portcullis memory"
         "portcullis redis")
echo "h2load -D 8 -c 8 -m 16 -t 1 --warm-up-time=1, ShouldRateLimit, one key, $RUNS runs each"
for c in "${configs[@]}"; do
  set -- $c
  config=bench.yaml
  [ "$1" = limitador ] && config=limits.yaml
  start "$1" "$config" "$2" || { stop; continue; }
  sleep 0.5
  for i in $(seq "$RUNS"); do
    printf '%-26s ' "$1 $2 #$i"
    run
  done
  stop
done

SHA=$(redis-cli -p $REDIS_PORT SCRIPT LOAD "$(cat "$root/server/src/store/redis/scripts/gcra.lua")")
printf '%-26s ' "ceiling P16"
redis-benchmark -p $REDIS_PORT -n 400000 -P 16 -c 8 -q EVALSHA "$SHA" 1 'rl:{bench}:default:user-1' \
  1 1 1 1000000 1 1 2>&1 | tr '\r' '\n' | grep -v '^$' | tail -1

if [ -x "$L" ]; then
  echo "exactness: 100 per 60 s on one fresh key, 8 connections x 16 streams, $EXACT_DURATION"
  for c in "${configs[@]}"; do
    set -- $c
    config=exact.yaml
    [ "$1" = limitador ] && config=limits-exact.yaml
    start "$1" "$config" "$2" || { stop; continue; }
    printf '%-26s ' "$1 $2"
    exact
    stop
  done
else
  echo "exactness skipped: no portcullis-load (cargo build --release -p portcullis-loadtest)"
fi

stop
redis-cli -p $REDIS_PORT shutdown nosave >/dev/null
rm -rf "$work"
