#!/usr/bin/env bash
# bench/zone-balance.sh — the blog's scenarios A and B through a fleet of gateways, Envoy's
# zone-aware routing (with the hand-written local cluster it needs) beside Locus's
# capacity-aware routing, same backends, the same number of requests through every replica.
#
#   SKIP_SETUP=1 bash bench/zone-balance.sh      # after bench/run.sh or ../shared/peers/setup.sh
#
# A: 2 gateways in zone-a, 1 in zone-b, one endpoint per zone (9101, 9103).
# B: 2 + 2 gateways, 2 endpoints per zone with one zone-a endpoint lost (9101, 9103, 9104).
# C: 1 + 1 gateways, the zone-a one receiving twice the traffic (open-loop Poisson arrivals,
#    bench/openloop.py), one endpoint per zone whose latency grows with load (`locus echo
#    --work-ms 2.5`: half busy when balanced); Envoy zone-aware (local cluster: one proxy per
#    zone) beside Locus load-aware spill (`locus.io/load-spill: "on"`, 1 s steps).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
[[ ${SKIP_SETUP:-0} == 1 ]] || bash "$PEERS/setup.sh" >/tmp/locus-zone-setup.log 2>&1 || exit 1
source "$PEERS/lib.sh"
trap 'stop_all' EXIT INT TERM
PIN=0
(cd "$ROOT" && cargo build --release --locked -q -p locus) || exit 1
LOCUS=$ROOT/target/release/locus
N=${N:-1000}
OUT=$HERE/results/zone-balance-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
start_backend zone-a; start_backend zone-b
for port in 9101 9102 9103 9104; do wait_http "http://127.0.0.1:$port/" || exit 1; done

envoy_config() {  # envoy_config INDEX ZONE ENDPOINTS("port:zone ...") FLEET("zone ...")
  local i=$1 zone=$2 eps=$3 fleet=$4 e f j=0
  cat <<YAML
node: {id: gw-$i, cluster: local, locality: {region: r, zone: $zone}}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $((19900 + i))}}}
cluster_manager: {local_cluster_name: local}
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: $((11000 + i))}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gw
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: backend}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
  clusters:
  - name: backend
    type: STATIC
    lb_policy: ROUND_ROBIN
    common_lb_config: {zone_aware_lb_config: {min_cluster_size: 1}}
    load_assignment:
      cluster_name: backend
      endpoints:
YAML
  for e in $eps; do
    cat <<YAML
      - locality: {region: r, zone: ${e#*:}}
        lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${e%%:*}}}}}]
YAML
  done
  cat <<YAML
  - name: local
    type: STATIC
    load_assignment:
      cluster_name: local
      endpoints:
YAML
  for f in $fleet; do
    j=$((j + 1))
    cat <<YAML
      - locality: {region: r, zone: $f}
        lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $((11000 + j))}}}}]
YAML
  done
}

locus_config() {  # locus_config PORT ENDPOINTS FLEET_ANNOTATION [SERVICE_ANNOTATIONS]
  local port=$1 eps=$2 fleet=$3 svc=${4:-"locus.io/zone-balance: capacity"} e i=0
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: bench, annotations: {locus.io/fleet: "$fleet"}}
spec: {gatewayClassName: locus, listeners: [{name: http, protocol: HTTP, port: $port}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: bench}
spec: {parentRefs: [{name: gw}], rules: [{backendRefs: [{name: backend, port: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: bench, annotations: {$svc}}
spec: {selector: {app: backend}, trafficDistribution: PreferClose, ports: [{name: http, port: 80}]}
YAML
  for e in $eps; do
    i=$((i + 1))
    printf -- '---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: be-%s, namespace: bench, labels: {app: backend}}\nspec: {address: 127.0.0.1, locality: r/%s, ports: {http: %s}}\n' "$i" "${e#*:}" "${e%%:*}"
  done
}

count() {  # count PORT... : N requests through each, prints the backends' counts as JSON
  python3 - "$N" "$@" <<'PY'
import http.client, json, sys
n, ports = int(sys.argv[1]), sys.argv[2:]
per_gateway = []
for p in ports:
    counts = {}
    c = http.client.HTTPConnection("127.0.0.1", int(p))
    for _ in range(n):
        c.request("GET", "/")
        r = c.getresponse()
        b = r.read().decode().strip() if r.status == 200 else f"status {r.status}"
        counts[b] = counts.get(b, 0) + 1
    per_gateway.append(counts)
print(json.dumps(per_gateway))
PY
}

run_scenario() {  # run_scenario NAME ENDPOINTS FLEET(zone per gateway) FLEET_ANNOTATION
  local name=$1 eps=$2 fleet=$3 annotation=$4 i=0 z ports=()
  for z in $fleet; do
    i=$((i + 1))
    envoy_config "$i" "$z" "$eps" "$fleet" > "$OUT/envoy-$name-$i.yaml"
    start_bg "envoy-$i" 0 "$ENVOY_BIN" -c "$OUT/envoy-$name-$i.yaml" --concurrency 1 --disable-hot-restart -l warn --base-id $((100 + i))
    ports+=($((11000 + i)))
  done
  for p in "${ports[@]}"; do wait_http "http://127.0.0.1:$p/" 200 || exit 1; done
  echo "$name envoy-zone-aware ${fleet// /,} $(count "${ports[@]}")" | tee -a "$OUT/results.txt"
  for ((j=1; j<=i; j++)); do stop_one "envoy-$j"; done
  i=0; ports=()
  for z in $fleet; do
    i=$((i + 1))
    locus_config $((12000 + i)) "$eps" "$annotation" > "$OUT/locus-$name-$i.yaml"
    start_bg "locus-$i" 0 "$LOCUS" serve -f "$OUT/locus-$name-$i.yaml" --workers 1 --bind 127.0.0.1 --admin off --locality "r/$z"
    ports+=($((12000 + i)))
  done
  for p in "${ports[@]}"; do wait_http "http://127.0.0.1:$p/" 200 || exit 1; done
  echo "$name locus-capacity-aware ${fleet// /,} $(count "${ports[@]}")" | tee -a "$OUT/results.txt"
  for ((j=1; j<=i; j++)); do stop_one "locus-$j"; done
}

run_scenario A "9101:zone-a 9103:zone-b" "zone-a zone-a zone-b" "zone-a=2,zone-b=1"
run_scenario B "9101:zone-a 9103:zone-b 9104:zone-b" "zone-a zone-a zone-b zone-b" "zone-a=2,zone-b=2"

# C: unequal traffic per gateway, backends that slow down under load.
C_SECONDS=${C_SECONDS:-30}
start_bg echo-c-a 0 "$LOCUS" echo --name zone-a-1 --listen 127.0.0.1:9201 --work-ms 2.5
start_bg echo-c-b 0 "$LOCUS" echo --name zone-b-1 --listen 127.0.0.1:9203 --work-ms 2.5
for port in 9201 9203; do wait_http "http://127.0.0.1:$port/hostname" || exit 1; done
openloop() {  # openloop PORT_A PORT_B: 267 and 133 req/s, the second half measured
  python3 "$HERE/openloop.py" --duration "$C_SECONDS" --measure $((C_SECONDS / 2)) "$1:267" "$2:133"
}
eps="9201:zone-a 9203:zone-b"
for i in 1 2; do
  z=$([[ $i == 1 ]] && echo zone-a || echo zone-b)
  envoy_config "$i" "$z" "$eps" "zone-a zone-b" > "$OUT/envoy-C-$i.yaml"
  start_bg "envoy-$i" 0 "$ENVOY_BIN" -c "$OUT/envoy-C-$i.yaml" --concurrency 1 --disable-hot-restart -l warn --base-id $((100 + i))
done
for p in 11001 11002; do wait_http "http://127.0.0.1:$p/hostname" 200 || exit 1; done
echo "C envoy-zone-aware zone-a,zone-b $(openloop 11001 11002)" | tee -a "$OUT/results.txt"
stop_one envoy-1; stop_one envoy-2
for spill in off on; do
  for i in 1 2; do
    z=$([[ $i == 1 ]] && echo zone-a || echo zone-b)
    locus_config $((12000 + i)) "$eps" "zone-a=1,zone-b=1" "locus.io/load-spill: \"$spill\"" > "$OUT/locus-C-$spill-$i.yaml"
    start_bg "locus-$i" 0 "$LOCUS" serve -f "$OUT/locus-C-$spill-$i.yaml" --workers 1 --bind 127.0.0.1 --admin off --locality "r/$z"
  done
  for p in 12001 12002; do wait_http "http://127.0.0.1:$p/hostname" 200 || exit 1; done
  who=$([[ $spill == on ]] && echo locus-load-aware || echo locus-priority)
  echo "C $who zone-a,zone-b $(openloop 12001 12002)" | tee -a "$OUT/results.txt"
  stop_one locus-1; stop_one locus-2
done
python3 - "$OUT/results.txt" "$N" <<'PY' | tee "$OUT/summary.md"
import json, sys
rows = [l.split(" ", 3) for l in open(sys.argv[1]).read().splitlines()]
print("| scenario | contender | shares | max/mean | cross-zone |")
print("|---|---|---|---:|---:|")
for scen, who, fleet, per_gateway in rows:
    zones = fleet.split(",")
    per_gateway = json.loads(per_gateway)
    total, cross, c = 0, 0, {}
    for zone, counts in zip(zones, per_gateway):
        for backend, n in counts.items():
            c[backend] = c.get(backend, 0) + n
            total += n
            if not backend.startswith(zone):
                cross += n
    shares = {k: v / total for k, v in sorted(c.items())}
    mx = max(shares.values()) * len(shares)
    print(f"| {scen} | {who} | {' '.join(f'{k} {v:.1%}' for k, v in shares.items())} | {mx:.2f} | {cross / total:.1%} |")
PY
echo "results in $OUT"
