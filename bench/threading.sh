#!/usr/bin/env bash
# bench/threading.sh — two workers on two cores: Locus per-core (one single-threaded runtime and
# one SO_REUSEPORT listener per worker, nginx's model) vs Locus shared (one work-stealing
# runtime), beside nginx and HAProxy with two workers each, wrk sharing the cores (no pinning).
#
#   bash bench/threading.sh                 # 3 interleaved rounds of 10 s
#   ROUNDS=5 DUR=5s bash bench/threading.sh
#
# Uses ../shared/peers (setup.sh must have run): its backends, its nginx and HAProxy configs
# with the worker counts raised to 2. Prints req/s and p99 per target per round and the medians.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
export PIN=0
source "$PEERS/lib.sh"
trap 'stop_all' EXIT INT TERM
(cd "$ROOT" && cargo build --release --locked -q -p locus) || exit 1
LOCUS=$ROOT/target/release/locus
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10s}; CONNS=${CONNS:-64}
start_backends >/dev/null 2>&1 || { echo "backends failed" >&2; exit 1; }
sed 's/^worker_processes 1;/worker_processes 2;/; s/nginx-proxy.pid/nginx-proxy2.pid/' "$P/conf/nginx-proxy.conf" > "$P/conf/nginx-proxy2.conf"
sed 's/nbthread 1/nbthread 2/; s/haproxy.pid/haproxy2.pid/' "$P/conf/haproxy.cfg" > "$P/conf/haproxy2.cfg"
start_bg nginx2 0 nginx -e "$LOGS/nginx2-error.log" -c "$P/conf/nginx-proxy2.conf"
start_bg haproxy2 0 haproxy -db -f "$P/conf/haproxy2.cfg"
"$HERE/locus-manifests.sh" > "$P/conf/locus-threading.yaml"
sed 's/port: 10003/port: 10004/' "$P/conf/locus-threading.yaml" > "$P/conf/locus-threading-shared.yaml"
start_bg locus-percore 0 "$LOCUS" serve -f "$P/conf/locus-threading.yaml" --workers 2 --threading per-core \
  --bind 127.0.0.1 --admin off --locality region-a/zone-a
start_bg locus-shared 0 "$LOCUS" serve -f "$P/conf/locus-threading-shared.yaml" --workers 2 --threading shared \
  --bind 127.0.0.1 --admin off --locality region-a/zone-a
declare -A PORT=( [nginx]=10001 [haproxy]=10002 [locus-per-core]=10003 [locus-shared]=10004 )
TARGETS=(nginx haproxy locus-per-core locus-shared)
for t in "${TARGETS[@]}"; do wait_http "http://127.0.0.1:${PORT[$t]}/" >/dev/null || { echo "$t not answering" >&2; exit 1; }; done
OUT=$(mktemp -d)
for t in "${TARGETS[@]}"; do wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1; done
for ((r=1; r<=ROUNDS; r++)); do
  for t in "${TARGETS[@]}"; do
    wrk -t2 -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:${PORT[$t]}/" > "$OUT/$t-$r.txt" 2>&1
    rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/$t-$r.txt")
    p99=$(awk '$1 == "99%" {print $2}' "$OUT/$t-$r.txt")
    errs=$(grep -c "Non-2xx\|Socket errors" "$OUT/$t-$r.txt")
    echo "round $r  $t: $rps req/s, p99 $p99, error lines $errs"
    echo "$t $rps $p99" >> "$OUT/all"
  done
done
echo "-- medians (2 workers each, wrk -t2 -c$CONNS, unpinned)"
python3 - "$OUT/all" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    t, rps, p99 = line.split()
    ms = float(p99[:-2]) if p99.endswith("ms") else float(p99[:-2]) / 1000 if p99.endswith("us") else float(p99[:-1]) * 1000
    rows.setdefault(t, []).append((float(rps), ms))
for t, v in rows.items():
    print(f"{t:<16} {statistics.median(r for r, _ in v):>10,.0f} req/s   p99 {statistics.median(m for _, m in v):.2f} ms")
PY
