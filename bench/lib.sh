# bench/lib.sh — what the bench scripts share (source it after setting ROOT).

# Builds the release binary and sets LOCUS to it; BIN=path uses that binary instead (no build).
build_locus() {
  if [[ -n ${BIN:-} ]]; then LOCUS=$BIN; return; fi
  (cd "$ROOT" && cargo build --release --locked -q -p locus) || return 1
  LOCUS=${CARGO_TARGET_DIR:-$ROOT/target}/release/locus
}

# start_echo NAME DIR: starts `locus echo` on a free port; sets ECHO_PORT (and ECHO_PID).
start_echo() {
  "$LOCUS" echo --name "$1" --listen 127.0.0.1:0 > "$2/echo-$1.out" &
  ECHO_PID=$!
  until grep -q listening "$2/echo-$1.out"; do sleep 0.05; done
  ECHO_PORT=$(sed -n 's/listening addr=127.0.0.1://p' "$2/echo-$1.out")
}

# one_service PORT [ROUTE_SPEC_LINE] [ENDPOINT_LOCALITY]: a Gateway on 8080, an HTTPRoute to
# Service apps/svc:80 and its one endpoint (a WorkloadEntry) on 127.0.0.1:PORT.
one_service() {
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
  ${2:-}
  rules: [{backendRefs: [{name: svc, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: apps}
spec:
  selector: {app: svc}
  ports: [{name: http, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: apps, labels: {app: svc}}
spec: {address: 127.0.0.1, ${3:+locality: $3, }ports: {http: $1}}
YAML
}

# The pieces below use ../shared/peers/lib.sh (source it first): start_bg, wait_http, $RUN.

# start_locus NAME MANIFEST PORT [extra args]: $LOCUS serving MANIFEST alone on the proxy core
# with one worker, as the peers run; waits until PORT answers 200.
start_locus() {
  local name=$1 manifest=$2 port=$3; shift 3
  start_bg "$name" "$PROXY_CPU" "$LOCUS" serve -f "$manifest" --workers 1 --bind 127.0.0.1 \
    --locality region-a/zone-a "$@"
  wait_http "http://127.0.0.1:$port/" 200
}

# cpu_ticks NAME: "user system" clock ticks of a process start_bg recorded, with its threads
# and its children (nginx's workers).
cpu_ticks() {
  local pid p f a b u=0 k=0; pid=$(cat "$RUN/pid.$1" 2>/dev/null) || { echo 0 0; return; }
  for p in "$pid" $(pgrep -P "$pid"); do
    for f in /proc/$p/task/*/stat; do
      read -r a b < <(awk '{print $14, $15}' "$f" 2>/dev/null || echo 0 0); u=$((u + a)); k=$((k + b))
    done
  done
  echo "$u $k"
}
