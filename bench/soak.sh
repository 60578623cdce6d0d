#!/usr/bin/env bash
# bench/soak.sh — DUR seconds (default 600) of steady load with everything hostile beside it:
#   - keep-alive load (wrk -c8) and a new connection per request (wrk -c4, Connection: close);
#   - a slowloris client holding 200 unfinished heads, again and again;
#   - aborted uploads (POST with a 100 kB content-length, 1 kB sent, then closed), 10 per second;
#   - one local backend killed and restarted every 30 s (two local, one in the next zone);
#   - a reload every 3 s (an annotation flips, so every reload rebuilds the tables).
# Reports errors on the well-formed requests, and Locus's RSS and open fds at start, peak and end.
#
#   bash bench/soak.sh                 # DUR=600; results in bench/results/soak-DATE/
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DUR=${DUR:-600}
OUT=${OUT:-$ROOT/bench/results/soak-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
(cd "$ROOT" && cargo build --release --locked -q -p locus)
LOCUS=$ROOT/target/release/locus
D=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$D"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
A1=$(free_port); A2=$(free_port); B1=$(free_port)
start_echo() { "$LOCUS" echo --name "$1" --listen "127.0.0.1:$2" > /dev/null 2>&1 & echo $!; }
start_echo a1 "$A1" > "$D/a1.pid"; start_echo a2 "$A2" > /dev/null; start_echo b1 "$B1" > /dev/null

manifest() { # $1: annotation value
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: apps}
spec:
  gatewayClassName: locus
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: svc, namespace: apps}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: svc, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: apps, annotations: {soak/round: "$1"}}
spec:
  selector: {app: svc}
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80}]
YAML
  for e in "a1 r/zone-a $A1" "a2 r/zone-a $A2" "b1 r/zone-b $B1"; do
    set -- $e
    printf -- "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: %s, namespace: apps, labels: {app: svc}}\nspec: {address: 127.0.0.1, locality: %s, ports: {http: %s}}\n" "$1" "$2" "$3"
  done
}
mkdir -p "$D/m"
manifest 0 > "$D/m/all.yaml"
"$LOCUS" serve -f "$D/m" --workers 2 --bind 127.0.0.1 --admin 127.0.0.1:0 --locality r/zone-a \
  > "$OUT/locus.out" 2> "$OUT/locus.log" &
LPID=$!
until grep -q "listening port=8080" "$OUT/locus.out"; do sleep 0.05; done
ADDR=$(sed -n 's/listening port=8080 addr=//p' "$OUT/locus.out")
ADMIN=$(sed -n 's/admin addr=//p' "$OUT/locus.out")

sample() { printf "%s %s %s\n" "$(date +%s)" "$(awk '/VmRSS/ {print $2}' /proc/$LPID/status)" "$(ls /proc/$LPID/fd | wc -l)"; }
sample > "$OUT/resources.txt"

# The hostile ones.
( while true; do python3 "$HERE/slowloris.py" "$ADDR" 200 8192 20 > /dev/null 2>&1 || true; done ) &
( python3 - "$ADDR" <<'PY'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
while True:
    try:
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /upload HTTP/1.1\r\nhost: svc\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
        s.close()
    except OSError:
        pass
    time.sleep(0.1)
PY
) &
( while true; do sleep 30; kill "$(cat "$D/a1.pid")" 2>/dev/null || true; sleep 2; start_echo a1 "$A1" > "$D/a1.pid"; done ) &
( i=0; while true; do sleep 3; i=$((i+1)); manifest "$i" > "$D/m/.all.tmp"; mv "$D/m/.all.tmp" "$D/m/all.yaml"; done ) &
( while true; do sleep 5; sample >> "$OUT/resources.txt"; done ) &

# The well-formed load.
wrk -t1 -c8 -d"${DUR}s" --latency "http://$ADDR/hostname" > "$OUT/wrk-keepalive.txt" 2>&1 &
K=$!
wrk -t1 -c4 -d"${DUR}s" -H "Connection: close" "http://$ADDR/hostname" > "$OUT/wrk-newconn.txt" 2>&1 &
N=$!
wait $K $N
sample >> "$OUT/resources.txt"
curl -s "http://$ADMIN/metrics" > "$OUT/metrics.txt"

errors() { # wrk's socket errors and non-2xx responses
  local f=$1
  printf "%s requests, %s non-2xx, socket errors: %s\n" \
    "$(awk '/requests in/ {print $1}' "$f")" \
    "$(awk '/Non-2xx/ {print $NF}' "$f" | grep . || echo 0)" \
    "$(grep 'Socket errors' "$f" | sed 's/.*Socket errors: //' || echo none)"
}
{
  echo "soak of ${DUR}s, $(date -u +%FT%TZ), results in $OUT"
  echo "keep-alive:     $(errors "$OUT/wrk-keepalive.txt")"
  echo "new connection: $(errors "$OUT/wrk-newconn.txt")"
  awk 'NR==1 {s=$2; sf=$3} {if ($2>p) p=$2; if ($3>pf) pf=$3; e=$2; ef=$3}
       END {printf "RSS MiB start %.1f peak %.1f end %.1f; open fds start %d peak %d end %d\n", s/1024, p/1024, e/1024, sf, pf, ef}' "$OUT/resources.txt"
  echo "reloads applied: $(grep -c '^applied ' "$OUT/locus.out")"
  grep -E '^locus_request_errors_total\{.*\} [1-9]' "$OUT/metrics.txt" | sed 's/^/  /' || true
} | tee "$OUT/summary.txt"
