#!/usr/bin/env bash
# Logins at ten times the Argon2 capacity while rate-limit checks go on: the README's
# login-storm row. One memory-store replica with 2 hashing permits (about 13 verifies/s at
# m = 64 MiB, t = 3, p = 4), logins offered at LOGIN_RATE (130/s) and checks at CHECK_RATE
# (5000/s), both open loop, so latency counts from each call's intended send time. Prints both
# summaries and the server's peak resident memory against the bound permits x 64 MiB + 128 MiB.
# Usage: cargo build --release -p portcullis-server -p portcullis-loadtest && bench/login-storm.sh
# Env: DURATION (20s), WARMUP (3s), LOGIN_RATE (130), CHECK_RATE (5000). Uses port 50081.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
B=$root/target/release/portcullis
L=$root/target/release/portcullis-load
DURATION=${DURATION:-20s}
WARMUP=${WARMUP:-3s}
LOGIN_RATE=${LOGIN_RATE:-130}
CHECK_RATE=${CHECK_RATE:-5000}
work=$(mktemp -d)
cd "$work"
python3 -c 'import secrets; print(secrets.token_hex(24))' > admin-token
printf 'Storm-Bench-Passw0rd!%s\n' "$RANDOM" > password
chmod 600 admin-token password
cat > portcullis.toml <<'TOML'
[auth]
# The throttles would refuse most logins before hashing; this run is about hashing.
login_limit_per_ip = "1000000/1s"
login_limit_per_ip_all_tenants = "1000000/1s"
login_limit_per_tenant = "1000000/1s"

[auth.argon2]
permits = 2
# The storm comes from one address (portcullis-load sends 127.0.0.1): let it use every permit.
permits_per_client_ip = 2
TOML
PORTCULLIS_ADMIN_TOKEN_FILE=$work/admin-token "$B" --config portcullis.toml \
  --listen 127.0.0.1:50081 --metrics-listen off --default-limit 1000000/1s > server.log 2>&1 &
server=$!
sleep 1

summary() { # json file
  python3 - "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
lat, errors = s["latency_us"], s["errors"]
codes = ",".join(f"{k}={v}" for k, v in errors["by_code"].items())
print(f"{s['throughput_rps']:>9,.1f}/s  p50 {lat['p50']} µs  p99 {lat['p99']} µs  "
      f"p99.9 {lat['p99.9']} µs  max {lat['max']} µs  errors {errors['total']} {codes}")
PY
}

"$L" --target http://127.0.0.1:50081 --scenario login --tenant storm --username bench-user \
  --password-file password --admin-token-file admin-token --rate "$LOGIN_RATE" \
  --timeout 5s --duration "$DURATION" --warmup "$WARMUP" --json login.json > login.out 2>&1 &
logins=$!
"$L" --target http://127.0.0.1:50081 --scenario check --rate "$CHECK_RATE" --connections 4 \
  --tenants 10 --keys 1000 --duration "$DURATION" --warmup "$WARMUP" --json check.json \
  > check.out 2>&1
wait $logins
echo -n "login at $LOGIN_RATE/s: "; summary login.json
echo -n "check at $CHECK_RATE/s: "; summary check.json
peak_kib=$(awk '/VmHWM/ {print $2}' /proc/$server/status)
echo "server peak RSS: $((peak_kib / 1024)) MiB (bound: 2 x 64 MiB + 128 MiB = 256 MiB)"
kill $server
wait $server 2>/dev/null
rm -rf "$work"
