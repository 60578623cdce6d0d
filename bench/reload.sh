#!/usr/bin/env bash
# bench/reload.sh — latency of requests while a 20,000-endpoint configuration is reloaded.
#
#   bash bench/reload.sh                  # 20 s without reloads, then 20 s with one every 2 s
#   ENDPOINTS=20000 RATE=1000 DUR=20 EVERY=2 bash bench/reload.sh
#
# One `locus serve --workers 1` (the data plane is one thread; the control plane, which builds
# tables, has its own), a `locus echo` backend, and bench/latency.py sending RATE requests per
# second open-loop (fixed arrivals, whatever the latency), to a Service of one endpoint beside a
# Service of ENDPOINTS endpoints (routed, so every reload builds its snapshot). Prints both runs'
# p50/p99/max and how long each reload took to apply.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ENDPOINTS=${ENDPOINTS:-20000}; RATE=${RATE:-1000}; DUR=${DUR:-20}; EVERY=${EVERY:-2}
source "$HERE/lib.sh"
build_locus
D=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$D"' EXIT
start_echo a "$D"
BACKEND=$ECHO_PORT
one_service "$BACKEND" "hostnames: [svc]" r/za > "$D/small.yaml"
big() {  # big GENERATION > file
  python3 - "$ENDPOINTS" "$1" <<'PY'
import sys
n, gen = int(sys.argv[1]), sys.argv[2]
print("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: big, namespace: apps}\n"
      "spec:\n  parentRefs: [{name: gw}]\n  hostnames: [big]\n  rules: [{backendRefs: [{name: big, port: 80}]}]")
print(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: apps, annotations: {{gen: \"{gen}\"}}}}\n"
      "spec:\n  trafficDistribution: PreferClose\n  ports: [{name: http, port: 80}]")
for s in range((n + 99) // 100):
    print(f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-{s}, namespace: apps, "
          "labels: {kubernetes.io/service-name: big}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:")
    for e in range(min(100, n - s * 100)):
        i = s * 100 + e
        print(f"- {{addresses: [\"127.1.{i // 250}.{i % 250 + 1}\"], zone: zone-{s % 100}}}")
PY
}
big 0 > "$D/big.yaml"
"$LOCUS" serve -f "$D/small.yaml" -f "$D/big.yaml" --workers 1 --bind 127.0.0.1 --ephemeral-ports \
  --admin off --locality r/za --poll-ms 100 --log-format json > "$D/locus.out" 2> "$D/locus.err" &
until grep -q "applied generation=1" "$D/locus.out"; do sleep 0.1; done
PORT=$(sed -n 's/listening port=8080 addr=127.0.0.1://p' "$D/locus.out")

echo "== $ENDPOINTS endpoints, $RATE req/s open loop, ${DUR}s each"
printf "%-18s %s\n" "without reloads" "$(python3 "$HERE/latency.py" --port "$PORT" --rate "$RATE" --duration "$DUR")"
(
  g=1
  end=$((SECONDS + DUR))
  while (( SECONDS < end )); do
    sleep "$EVERY"; g=$((g + 1))
    big "$g" > "$D/big.next" && mv "$D/big.next" "$D/big.yaml"
  done
) &
printf "%-18s %s\n" "with reloads" "$(python3 "$HERE/latency.py" --port "$PORT" --rate "$RATE" --duration "$DUR")"
wait %3 2>/dev/null || true
sleep 2
echo "reloads applied: $(grep -c 'applied generation' "$D/locus.out") (first load included)"
echo "time to apply each (model, table, publish; ms): $(grep -o '"took_ms":[0-9]*' "$D/locus.err" | cut -d: -f2 | tr '\n' ' ')"
