#!/usr/bin/env bash
# bench/cpu.sh — CPU time per request of Locus, nginx and HAProxy, nothing attached to them.
#
#   bash bench/cpu.sh                        # 15 interleaved rounds of 5 s each (≈4 min)
#   ROUNDS=5 DUR=3 bash bench/cpu.sh         # shorter
#   BIN=/path/to/locus bash bench/cpu.sh      # that binary instead of a fresh release build
#   BIN2=/path/to/other/locus bash bench/cpu.sh   # a second Locus build beside the first
#
# Each proxy alone on cpu1 with one worker, wrk (-t1 -c64) on cpu0 with the peers' backends
# (../shared/peers, setup.sh must have run). User and kernel time come from the processes' own
# counters before and after each wrk run, so no tracer weighs on the proxies: perf's syscall
# tracepoints (syscalls.sh) add a cost to every syscall, more to the proxies that make more of
# them. Rounds are interleaved (nginx, HAProxy, Locus, nginx, ...) and compared round by round,
# because this machine's speed drifts more between minutes than the proxies differ.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
source "$PEERS/lib.sh"
source "$HERE/lib.sh"
build_locus
D=$(mktemp -d)
trap 'stop_all >/dev/null 2>&1; rm -rf "$D"' EXIT
ROUNDS=${ROUNDS:-15}; DUR=${DUR:-5}
start_backends >/dev/null 2>&1
start_nginx_proxy >/dev/null 2>&1
start_haproxy >/dev/null 2>&1
"$HERE/locus-manifests.sh" > "$D/m.yaml"
declare -A URL=([nginx]=http://127.0.0.1:10001/ [haproxy]=http://127.0.0.1:10002/)
declare -A NAME=([nginx]=nginx-proxy [haproxy]=haproxy)
TARGETS="nginx haproxy"
add_locus() {  # add_locus NAME PORT: $LOCUS on PORT, measured beside the peers
  sed "s/port: 10003/port: $2/" "$D/m.yaml" > "$D/$1.yaml"
  start_locus "$1" "$D/$1.yaml" "$2" --admin off >/dev/null
  URL[$1]=http://127.0.0.1:$2/; NAME[$1]=$1; TARGETS="$TARGETS $1"
}
add_locus locus 10003
[[ -n ${BIN2:-} ]] && LOCUS=$BIN2 add_locus locus2 10004
for ((r = 1; r <= ROUNDS; r++)); do
  for t in $TARGETS; do
    read -r u0 k0 < <(cpu_ticks "${NAME[$t]}")
    n=$(pin "$WRK_CPU" wrk -t1 -c64 -d"${DUR}s" "${URL[$t]}" | awk '/requests in/ {print $1}')
    read -r u1 k1 < <(cpu_ticks "${NAME[$t]}")
    echo "$r $t $n $((u1 - u0)) $((k1 - k0))"
  done
done > "$D/rounds.txt"
python3 - "$D/rounds.txt" "$(getconf CLK_TCK)" "$DUR" <<'PY'
import statistics as st, sys
path, hz, dur = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rounds = {}
for line in open(path):
    r, t, n, u, k = line.split()
    n = int(n)
    us = lambda ticks: int(ticks) * 1e6 / hz / n
    rounds.setdefault(int(r), {})[t] = {"user": us(u), "kernel": us(k), "total": us(u) + us(k), "req/s": n / dur}
targets = list(next(iter(rounds.values())))
print(f"{len(rounds)} rounds; medians (and, for Locus, its ratio to each peer in the same round)")
print(f"{'target':<9} {'req/s':>8} {'user µs':>8} {'kernel µs':>10} {'CPU µs':>8}")
for t in targets:
    m = {k: st.median(rounds[r][t][k] for r in rounds) for k in ("req/s", "user", "kernel", "total")}
    print(f"{t:<9} {m['req/s']:>8.0f} {m['user']:>8.2f} {m['kernel']:>10.2f} {m['total']:>8.2f}")
for a in [t for t in targets if t.startswith("locus")]:
    for b in [t for t in targets if t != a]:
        for k in ("user", "total"):
            ratios = [rounds[r][a][k] / rounds[r][b][k] for r in rounds]
            print(f"{a} ÷ {b}, {k} CPU: median {st.median(ratios):.3f}, less in {sum(x < 1 for x in ratios)} of {len(ratios)} rounds")
PY
