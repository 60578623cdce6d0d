#!/usr/bin/env bash
# bench/failover.sh — locality failover under steady load: Locus beside Envoy, nginx and
# HAProxy, with ../shared/peers/failover_probe.py (50 req/s, new connection per request; at
# t=3 s zone-a fails, at t=10 s it is restored).
#
#   bash bench/failover.sh                 # Locus variants, then the peers (≈ 25 min)
#   PEERS_TOO=0 bash bench/failover.sh     # Locus only
#   DUR=20 bash bench/failover.sh          # shorter probes
#   VARIANTS=multicluster PEER_LIST=envoy bash bench/failover.sh   # across clusters vs Envoy
#
# Locus variants: defaults (no policy), the same outlier settings as the peers' Envoy
# (consecutive 5xx 1, interval 1 s, base ejection 30 s, max 100%), active checks like
# envoy-hc (1 s interval, unhealthy 1, healthy 2), a retry on 503 like envoy-retry, and
# `multicluster`: the same endpoints as a ServiceImport of three clusters (zone-a's in the
# gateway's own), with the `outlier` variant's DestinationRule.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
[[ ${SKIP_SETUP:-0} == 1 ]] || bash "$PEERS/setup.sh" >/tmp/locus-failover-setup.log 2>&1 || { tail /tmp/locus-failover-setup.log; exit 1; }
source "$PEERS/lib.sh"
trap 'stop_all' EXIT INT TERM
PIN=0
# LOCUS_BIN: a binary already built (e.g. a previous run's copy), instead of building one.
[[ -n ${LOCUS_BIN:-} ]] || (cd "$ROOT" && cargo build --release --locked -q -p locus) || exit 1
RATE=${RATE:-50}; DUR=${DUR:-45}; FAULT_AT=${FAULT_AT:-3}; RESTORE_AT=${RESTORE_AT:-10}
OUT=$HERE/results/failover-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
# A copy, so rebuilding the tree during the run cannot swap the binary under it.
cp "${LOCUS_BIN:-$ROOT/target/release/locus}" "$OUT/locus-bin" && LOCUS=$OUT/locus-bin

variant_yaml() {  # extra manifests per variant
  case $1 in
    defaults) ;;
    outlier) cat <<'YAML'
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: bench}
spec:
  host: backend.bench.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
YAML
    ;;
    hc) cat <<'YAML'
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: backend, namespace: bench}
spec:
  targetRefs: [{group: "", kind: Service, name: backend}]
  healthCheck:
    active: {type: HTTP, interval: 1s, timeout: 500ms, unhealthyThreshold: 1, healthyThreshold: 2, http: {path: /}}
YAML
    ;;
    retry) cat <<'YAML'
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: bench}
spec:
  host: backend.bench.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: backend, namespace: bench}
spec:
  targetRefs: [{group: "", kind: Service, name: backend}]
  retry: {numRetries: 2, retryOn: {triggers: [connect-failure, retriable-status-codes], httpStatusCodes: [503]}}
YAML
    ;;
  esac
}

L="source $PEERS/lib.sh; PIN=0"
fault_cmd()   { case $1 in 503) echo "$L; backend_mode zone-a 503";; kill) echo "$L; stop_one backend-zone-a";; esac; }
restore_cmd() { case $1 in 503) echo "$L; backend_mode zone-a 200";; kill) echo "$L; start_backend zone-a && wait_http http://127.0.0.1:9101/ && wait_http http://127.0.0.1:9102/";; esac; }

for v in ${VARIANTS:-defaults outlier hc retry}; do
  for f in kill 503; do
    start_backend zone-a; start_backend zone-b; start_backend region-b
    for port in 9101 9102 9103 9104 9105 9106; do wait_http "http://127.0.0.1:$port/" || exit 1; done
    if [[ $v == multicluster ]]; then
      # The peers' Envoy outlier settings, lent to the import by the exported Service's
      # DestinationRule.
      { "$HERE/locus-manifests.sh" multicluster; variant_yaml outlier; } > "$OUT/locus-$v.yaml"
      extra=(--cluster local)
    else
      { "$HERE/locus-manifests.sh"; variant_yaml "$v"; } > "$OUT/locus-$v.yaml"
      extra=()
    fi
    start_bg locus "$PROXY_CPU" "$LOCUS" serve -f "$OUT/locus-$v.yaml" --workers 1 --bind 127.0.0.1 --locality region-a/zone-a "${extra[@]}"
    wait_http http://127.0.0.1:10003/ 100 || exit 1
    python3 "$PEERS/failover_probe.py" --port 10003 --rate "$RATE" --duration "$DUR" \
      --fault-at "$FAULT_AT" --fault-cmd "$(fault_cmd $f)" --restore-at "$RESTORE_AT" --restore-cmd "$(restore_cmd $f)" \
      --label "locus-$v / fault=$f" --json "$OUT/locus-$v-$f.json" | tee -a "$OUT/locus.txt"
    echo | tee -a "$OUT/locus.txt"
    stop_all
  done
done
PEER_LIST=${PEER_LIST:-envoy envoy-nomerge envoy-retry envoy-hc nginx haproxy}
if [[ ${PEERS_TOO:-1} == 1 ]]; then
  # shellcheck disable=SC2086
  PEERS_DIR=$P DUR=$DUR RATE=$RATE bash "$PEERS/failover.sh" $PEER_LIST > "$OUT/peers.txt" 2>&1
fi
# Peers' probes are summarised only when they ran in this run (their files are overwritten).
PEERS_GLOB=""
if [[ ${PEERS_TOO:-1} == 1 ]]; then
  for p in $PEER_LIST; do PEERS_GLOB="$PEERS_GLOB $P/results/failover-$p-*.json"; done
fi
python3 - "$OUT" "$PEERS_GLOB" <<'PY'
import glob, json, os, sys
out, peers = sys.argv[1], sys.argv[2]
rows = []
files = sorted(glob.glob(f"{out}/locus-*.json")) + sorted(f for g in peers.split() for f in glob.glob(g))
for f in files:
    d = json.load(open(f))
    ft, rt = d["fault_t"], d["restore_t"]
    recs = d["recs"]
    fails = sum(1 for t, s, b in recs if s != 200)
    post = [r for r in recs if ft is not None and ft <= r[0] < (rt or 1e9)]
    moved = next((t - ft for t, s, b in post if s == 200 and not b.startswith("zone-a")), None)
    back = next((t - rt for t, s, b in recs if rt is not None and t >= rt and s == 200 and b.startswith("zone-a")), None)
    rows.append((d["label"], fails, len(recs), moved, back))
lines = ["| contender / fault | failed requests | first answer from another zone after the fault | first zone-a answer after restore |",
         "|---|---:|---:|---:|"]
for label, fails, n, moved, back in rows:
    fmt = lambda x: "—" if x is None else f"{x:.2f} s"
    lines.append(f"| {label} | {fails} of {n} | {fmt(moved)} | {fmt(back)} |")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "results in $OUT"
