#!/usr/bin/env bash
# CPU work per call, in instructions counted by callgrind: Check, VerifyToken and
# ShouldRateLimit on the memory store, Check and ShouldRateLimit on Redis, for each binary
# given. Unlike calls/s on a shared machine, the count repeats to within a few tenths of a
# percent, so two builds can be compared for changes that should not cost anything (a
# refactor, a dependency bump).
# Usage: bench/instructions-per-call.sh BINARY [BINARY…] (default: target/release/portcullis)
# Needs valgrind, h2load (apt-get install nghttp2-client) and redis-server; uses ports 6394
# and 50074. Each row takes about ten seconds.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
binaries=("$@")
[ ${#binaries[@]} -eq 0 ] && binaries=("$root/target/release/portcullis")
calls=20000
work=$(mktemp -d)
cd "$work" || exit 1
JWT_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export JWT_SECRET_KEY
TOKEN=$(python3 "$root/bench/mint_token.py" "$JWT_SECRET_KEY") python3 "$root/bench/bodies.py" >/dev/null
redis-server --port 6394 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$work" >/dev/null
until redis-cli -p 6394 ping >/dev/null 2>&1; do sleep 0.1; done
up() { for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/50074) 2>/dev/null && return 0; sleep 0.1; done; echo "server did not start:"; tail -3 server.log; }
h2() { h2load -n "$1" -c 4 -m 8 -t 1 -d "$2" -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:50074$3" 2>&1; }
# One row: start the server under callgrind, warm up, zero the counters, make $calls calls,
# dump, and divide.
row() { # binary store body path
  local store_args=()
  [ "$2" = redis ] && store_args=(--redis-url redis://127.0.0.1:6394)
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$1" --listen 127.0.0.1:50074 \
    --metrics-listen off --default-limit 1000000/1s --envoy-config bench.yaml "${store_args[@]}" > server.log 2>&1 &
  local pid=$!
  up
  h2 2000 "$3" "$4" >/dev/null
  callgrind_control -z $pid >/dev/null 2>&1
  h2 $calls "$3" "$4" | grep -q "0 failed, 0 errored" || echo "  (some calls failed)"
  callgrind_control -d $pid >/dev/null 2>&1
  kill $pid; wait $pid 2>/dev/null
  local dump
  dump=$(find "$work" -name "cg.$pid.*" | head -1)
  local total
  total=$(grep -h "^summary:\|^totals:" "$dump" | head -1 | awk '{print $2}')
  printf '%-8s %-16s %8d instructions/call\n' "$2" "$(basename "$4")" $((total / calls))
  rm -f "$work"/cg.$pid*
}
for b in "${binaries[@]}"; do
  echo "== $b"
  row "$b" memory check.bin /portcullis.v1.RateLimitService/Check
  row "$b" memory verify.bin /portcullis.v1.AuthService/VerifyToken
  row "$b" memory rls.bin /envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
  row "$b" redis check.bin /portcullis.v1.RateLimitService/Check
  row "$b" redis rls.bin /envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
done
redis-cli -p 6394 shutdown nosave >/dev/null
rm -rf "$work"
