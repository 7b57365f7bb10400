#!/usr/bin/env bash
# The README's throughput table: h2load against the memory and the Redis store, Check,
# ShouldRateLimit and VerifyToken, plus redis-benchmark's ceiling for the same Lua script, in
# one run.
# Usage: cargo build --release -p portcullis-server && bench/h2load-matrix.sh
# Needs h2load (apt-get install nghttp2-client) and redis-server; uses ports 6390, 50061-50062.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$root/target/release/portcullis}
work=$(mktemp -d)
cd "$work"
export JWT_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
# Request bodies and bench.yaml, the Envoy limits they meet.
TOKEN=$(python3 "$root/bench/mint_token.py" "$JWT_SECRET_KEY") python3 "$root/bench/bodies.py"
redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir "$work" >/dev/null
until redis-cli -p 6390 ping >/dev/null 2>&1; do sleep 0.1; done
# JWT_SECRET_KEY (above) signs and verifies; two servers cannot share the admin port.
$B --listen 127.0.0.1:50061 --metrics-listen off --default-limit 1000000/1s --envoy-config bench.yaml > mem.log 2>&1 &
$B --listen 127.0.0.1:50062 --metrics-listen off --default-limit 1000000/1s --envoy-config bench.yaml --redis-url redis://127.0.0.1:6390 > redis.log 2>&1 &
# Each server must be listening before its rows; one that is not shows its log instead.
up() { for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 is not listening:"; tail -3 "$2"; }
up 50061 mem.log
up 50062 redis.log
# Prints h2load's rate and mean/sd/max, then percentiles from its per-request log (which h2load
# appends to, hence the rm).
run() { rm -f requests.log; h2load -D 8 -c 8 -m 16 -t 1 --warm-up-time=1 --log-file=requests.log -d $2 -H 'content-type: application/grpc' -H 'te: trailers' http://127.0.0.1:$1$3 2>&1 | grep -E "finished in|time for request" | tr -s ' ' | tr '\n' ' '; python3 "$root/bench/latency.py" requests.log; }
echo -n "memory check: "; run 50061 check.bin /portcullis.v1.RateLimitService/Check
echo -n "memory rls:   "; run 50061 rls.bin /envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
echo -n "memory verify: "; run 50061 verify.bin /portcullis.v1.AuthService/VerifyToken
echo -n "redis check:  "; run 50062 check.bin /portcullis.v1.RateLimitService/Check
echo -n "redis rls:    "; run 50062 rls.bin /envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
SHA=$(redis-cli -p 6390 SCRIPT LOAD "$(cat "$root/server/src/store/redis/scripts/gcra.lua")")
echo -n "ceiling P16:  "; redis-benchmark -p 6390 -n 400000 -P 16 -c 8 -q EVALSHA $SHA 1 'rl:{bench}:default:user-1' 1 1 1 1000000 1 1 2>&1 | tr '\r' '\n' | tail -1
echo -n "ceiling P1:   "; redis-benchmark -p 6390 -n 200000 -c 8 -q EVALSHA $SHA 1 'rl:{bench}:default:user-1' 1 1 1 1000000 1 1 2>&1 | tr '\r' '\n' | tail -1
kill %1 %2 2>/dev/null
redis-cli -p 6390 shutdown nosave >/dev/null
rm -rf "$work"
