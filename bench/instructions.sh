#!/usr/bin/env bash
# bench/instructions.sh — user-space instructions per proxied request, under callgrind: exact
# and repeatable where CPU time moves 10–30% between runs on this machine.
#
#   bash bench/instructions.sh [BINARY]     # default: target/release/locus (built if missing)
#   bash bench/instructions.sh nginx        # the peers' nginx proxy, measured the same way
#
# Starts the peers' nginx backends (../shared/peers, setup.sh must have run), Locus with one
# worker under `valgrind --tool=callgrind` on the bench manifest, warms up with wrk for 3 s,
# zeroes the counters, runs wrk (-t1 -c16) for 5 s, dumps, and prints total instructions over
# requests answered, and the locked instructions among them (bench/locked.py: each costs about
# 5 ns here, a full barrier, so they weigh far more than their count). Compare builds in the
# same way, one after the other. KEEP=file keeps the dump (per-instruction, --dump-instr=yes).
# CACHE_SIM=1 adds callgrind's cache and branch simulation, and prints per request its L1i
# misses and a modelled cycle count: instructions, plus 10 cycles per L1 miss (code or data),
# 100 per last-level miss, 15 per mispredicted branch and 15 per locked instruction. A model
# (no prefetch, a simple predictor), for comparing builds and proxies on this machine, which
# exposes no cycle counters.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
BIN=${1:-$ROOT/target/release/locus}
[[ $BIN == nginx || -x $BIN ]] || (cd "$ROOT" && cargo build --release --locked -q -p locus)
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null
source "$PEERS/lib.sh"
D=$(mktemp -d)
VP=
# Waits for the proxy to exit: the next run binds the same port.
trap 'kill $VP 2>/dev/null; wait $VP 2>/dev/null; stop_all >/dev/null 2>&1; rm -rf "$D"' EXIT
start_backends >/dev/null 2>&1
CG=(valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$D/cg.%p")
[[ -n ${CACHE_SIM:-} ]] && CG+=(--cache-sim=yes --branch-sim=yes)
if [[ $BIN == nginx ]]; then
  # One process (no master), on a port of its own, the peers' proxy configuration otherwise.
  PORT=10011
  sed -e 's/^daemon off;/daemon off; master_process off;/' -e "s/listen 127.0.0.1:10001/listen 127.0.0.1:$PORT/" \
    "$P/conf/nginx-proxy.conf" > "$D/nginx.conf"
  "${CG[@]}" nginx -e "$D/error.log" -c "$D/nginx.conf" >/dev/null 2>&1 &
else
  PORT=10003
  "$HERE/locus-manifests.sh" > "$D/m.yaml"
  "${CG[@]}" "$BIN" serve -f "$D/m.yaml" --workers 1 --bind 127.0.0.1 --admin off \
    --locality region-a/zone-a ${LOCUS_ARGS:-} >/dev/null 2>&1 &
fi
VP=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/ && break; sleep 0.2; done
wrk -t1 -c16 -d3s http://127.0.0.1:$PORT/ >/dev/null 2>&1
callgrind_control -z "$VP" >/dev/null
N=$(wrk -t1 -c16 -d5s http://127.0.0.1:$PORT/ | awk '/requests in/ {print $1}')
callgrind_control -d "$VP" >/dev/null
for _ in $(seq 30); do ls "$D"/cg.*.* >/dev/null 2>&1 && break; sleep 1; done; sleep 1
DUMP=$(ls -t "$D"/cg.*.* | head -1)
TOTAL=$(grep -h "^summary:\|^totals:" "$DUMP" | head -1 | awk '{print $2}')
echo "$(basename "$BIN"): requests=$N instructions/request=$((TOTAL / N))"
REPORT=$(python3 "$HERE/locked.py" "$DUMP" "$N" "${TOP:-0}")
echo "$REPORT"
LOCKED=$(sed -n 's/^locked instructions\/request=\([0-9.]*\).*/\1/p' <<<"$REPORT")
if [[ -n ${CACHE_SIM:-} ]]; then
  awk -v n="$N" -v locked="$LOCKED" '/^events:/ {for (i = 2; i <= NF; i++) col[$i] = i} /^summary:/ {
    for (k in col) v[k] = $(col[k]) / n
    l1 = v["I1mr"] + v["D1mr"] + v["D1mw"]; ll = v["ILmr"] + v["DLmr"] + v["DLmw"]
    br = v["Bcm"] + v["Bim"]
    printf "simulated L1i misses/request=%.0f L1d misses=%.0f mispredicted branches=%.0f\n", v["I1mr"], v["D1mr"] + v["D1mw"], br
    printf "modelled cycles/request=%.0f (instructions %.0f, L1i %.0f, L1d %.0f, last level %.0f, branches %.0f, locked %.0f)\n", \
      v["Ir"] + 10 * l1 + 100 * ll + 15 * br + 15 * locked, v["Ir"], 10 * v["I1mr"], 10 * (v["D1mr"] + v["D1mw"]), 100 * ll, 15 * br, 15 * locked }' "$DUMP"
fi
[[ -n ${KEEP:-} ]] && cp "$DUMP" "$KEEP"
