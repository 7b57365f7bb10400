#!/usr/bin/env bash
# The README's client-layer table: an axum hello-world with no layer, with AuthLayer (local
# verification of an EdDSA token), and with both layers (each request also a Check through a
# local Portcullis on the memory store), measured with h2load in one run.
# Usage: cargo build --release -p portcullis-server --bin portcullis &&
#        cargo build --release -p portcullis-client --features axum --example layer_bench &&
#        bench/client-layers.sh
# Needs h2load (apt-get install nghttp2-client) and openssl; uses ports 50071, 8091-8093.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
P=$root/target/release/portcullis
L=$root/target/release/examples/layer_bench
work=$(mktemp -d)
cd "$work"
openssl genpkey -algorithm ed25519 -out bench.pem 2>/dev/null
printf '[[key]]\nkid = "bench"\nalgorithm = "EdDSA"\nstate = "active"\nprivate_key_file = "bench.pem"\n' > keys.toml
export PORTCULLIS_WATCH_TOKEN=$(openssl rand -hex 16)
$P --listen 127.0.0.1:50071 --metrics-listen off --jwt-key-set keys.toml --default-limit 1000000/1s > portcullis.log 2>&1 &
TOKEN=$($L mint bench.pem bench)
for mode in none auth both; do
  case $mode in none) port=8091;; auth) port=8092;; both) port=8093;; esac
  LAYERS=$mode PORTCULLIS=http://127.0.0.1:50071 LISTEN=127.0.0.1:$port $L serve > $mode.log 2>&1 &
done
up() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 is not listening"; }
for port in 50071 8091 8092 8093; do up $port; done
sleep 2 # the verifiers hear the key set
# A request must be admitted before the rows mean anything.
for port in 8091 8092 8093; do code=$(curl -s -o /dev/null -w "%{http_code}" -H "authorization: Bearer $TOKEN" http://127.0.0.1:$port/tenants/bench/hello); [ "$code" = 200 ] || echo "port $port answers $code"; done
run() { h2load -D 8 -c 8 -m 16 -t 1 --warm-up-time=1 -H "authorization: Bearer $TOKEN" http://127.0.0.1:$1/tenants/bench/hello 2>&1 | grep -E "finished in|status codes|time for request" | tr -s ' ' | tr '\n' ' '; echo; }
echo -n "no layer:    "; run 8091
echo -n "AuthLayer:   "; run 8092
echo -n "both layers: "; run 8093
kill $(jobs -p) 2>/dev/null
wait 2>/dev/null
rm -rf "$work"
