#!/usr/bin/env bash
# bench/tls.sh — HTTPS beside nginx and HAProxy: the same ECDSA P-256 certificate for everyone,
# one worker each on cpu1, wrk on cpu0, the peers' nginx backends (../shared/peers).
#
#   bash bench/tls.sh                      # ROUNDS=3 DUR=8s CONNS=64 IDLE=1000
#
# Three figures per proxy and round:
#   keepalive  requests/s over TLS keep-alive connections (wrk -c$CONNS)
#   handshake  new TLS connections per second (wrk with `Connection: close`: one full
#              handshake per request, no session resumption)
#   idle RSS   memory held by $IDLE idle TLS connections (RSS with them open − before)
# Results go to bench/results/tls-DATE/ (raw wrk output and a summary table).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-8s}; CONNS=${CONNS:-64}; IDLE=${IDLE:-1000}
source "$PEERS/lib.sh"
source "$HERE/lib.sh"
build_locus
OUT=$ROOT/bench/results/tls-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
D=$(mktemp -d)
LOCUS_PID=
trap 'kill $LOCUS_PID 2>/dev/null; stop_all >/dev/null 2>&1; rm -rf "$D"' EXIT
ulimit -n 20000 2>/dev/null || true

# One certificate for everyone.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$D/key.pem" -out "$D/cert.pem" 2>/dev/null
cat "$D/cert.pem" "$D/key.pem" > "$D/combined.pem"

# nginx and HAProxy: their plain proxy configurations with a TLS listener instead.
sed -e "s#listen 127.0.0.1:10001 reuseport backlog=4096;#listen 127.0.0.1:10011 ssl reuseport backlog=4096; ssl_certificate $D/cert.pem; ssl_certificate_key $D/key.pem; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;#" \
    -e "s#nginx-proxy.pid#nginx-tls.pid#" "$P/conf/nginx-proxy.conf" > "$D/nginx-tls.conf"
sed -e "s#bind 127.0.0.1:10002#bind 127.0.0.1:10012 ssl crt $D/combined.pem alpn http/1.1#" \
    -e "s#haproxy.pid#haproxy-tls.pid#" "$P/conf/haproxy.cfg" > "$D/haproxy-tls.cfg"
# Locus: the bench manifest with an HTTPS listener and the certificate as a Secret.
{
  "$HERE/locus-manifests.sh" | sed -e 's#{name: http, protocol: HTTP, port: 10003}#{name: https, protocol: HTTPS, port: 10013, tls: {certificateRefs: [{name: cert}]}}#'
  echo "---"
  echo "apiVersion: v1"
  echo "kind: Secret"
  echo "metadata: {name: cert, namespace: bench}"
  echo "type: kubernetes.io/tls"
  echo "stringData:"
  echo "  tls.crt: |"; sed 's/^/    /' "$D/cert.pem"
  echo "  tls.key: |"; sed 's/^/    /' "$D/key.pem"
} > "$D/locus.yaml"

start_backends >/dev/null
start_bg nginx-tls "$PROXY_CPU" nginx -e "$LOGS/nginx-tls-error.log" -c "$D/nginx-tls.conf"
start_bg haproxy-tls "$PROXY_CPU" haproxy -db -f "$D/haproxy-tls.cfg"
taskset -c "$PROXY_CPU" "$LOCUS" serve -f "$D/locus.yaml" --workers 1 --bind 127.0.0.1 --admin off \
  --locality region-a/zone-a > "$D/locus.out" 2>&1 &
LOCUS_PID=$!
declare -A URL=([nginx]=https://127.0.0.1:10011/ [haproxy]=https://127.0.0.1:10012/ [locus]=https://127.0.0.1:10013/)
declare -A PID=([nginx]=$(cat "$RUN/pid.nginx-tls") [haproxy]=$(cat "$RUN/pid.haproxy-tls") [locus]=$LOCUS_PID)
for name in nginx haproxy locus; do
  for _ in $(seq 100); do curl -sk -o /dev/null "${URL[$name]}" && break; sleep 0.1; done
  curl -sk -o /dev/null "${URL[$name]}" || { echo "$name does not answer over TLS" >&2; exit 1; }
done

rss_kib() { # all processes of a tree (nginx: master and worker)
  local total=0 p; for p in "$1" $(pgrep -P "$1"); do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done; echo $total; }
wrk_rps() { awk '/Requests\/sec/ {print $2}' "$1"; }

for round in $(seq "$ROUNDS"); do
  for name in nginx haproxy locus; do
    url=${URL[$name]}
    # Idle connections first, before load has grown (and fragmented) the heap.
    python3 - "${url#https://}" "$IDLE" "$OUT/idle-$name-$round.txt" "${PID[$name]}" <<'PY'
import os, socket, ssl, sys, time
hostport, n, out, pid = sys.argv[1].rstrip("/"), int(sys.argv[2]), sys.argv[3], sys.argv[4]
host, port = hostport.split(":")
def rss(p):
    total = 0
    for q in [p] + os.popen(f"pgrep -P {p}").read().split():
        try:
            for line in open(f"/proc/{q}/status"):
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
time.sleep(1)
before = rss(pid)
conns = [ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname=None) for _ in range(n)]
time.sleep(1)
after = rss(pid)
open(out, "w").write(f"idle_rss_before_kib={before} with_{n}_kib={after} per_1000_kib={(after - before) * 1000 // n}\n")
for s in conns:
    s.close()
PY
    taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$DUR" "$url" > "$OUT/keepalive-$name-$round.txt" 2>&1
    taskset -c "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$DUR" -H "Connection: close" "$url" > "$OUT/handshake-$name-$round.txt" 2>&1
    printf "round %s %-8s keepalive %8s req/s  handshake %8s conn/s  %s\n" "$round" "$name" \
      "$(wrk_rps "$OUT/keepalive-$name-$round.txt")" "$(wrk_rps "$OUT/handshake-$name-$round.txt")" \
      "$(cat "$OUT/idle-$name-$round.txt")" | tee -a "$OUT/summary.txt"
  done
done
echo "results: $OUT"
