#!/usr/bin/env bash
# Manifests for the benchmark gateway: the six loopback endpoints of the peers' setup in three
# localities (as Envoy's config ranks them), PreferClose, listener on 127.0.0.1:10003.
#   locus-manifests.sh        # the bench config
#   locus-manifests.sh big    # plus a Service of 10,000 endpoints in 100 zones (memory figure)
#   locus-manifests.sh multicluster  # the same endpoints as an MCS ServiceImport of three
#                                    # clusters: zone-a's in `local`, zone-b's in `remote-1`,
#                                    # region-b's in `remote-2` (serve with --cluster local)
set -euo pipefail
MODE=${1:-}
# The Gateway on 10003 and its one route, to backendRef $1.
gateway_and_route() {
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bench, namespace: bench}
spec:
  gatewayClassName: locus
  listeners: [{name: http, protocol: HTTP, port: 10003}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: backend, namespace: bench}
spec:
  parentRefs: [{name: bench}]
  rules: [{backendRefs: [$1]}]
---
YAML
}
if [[ $MODE == multicluster ]]; then
  gateway_and_route "{group: multicluster.x-k8s.io, kind: ServiceImport, name: backend, port: 80}"
  cat <<'YAML'
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: backend, namespace: bench}
spec:
  type: ClusterSetIP
  ports: [{name: http, port: 80, protocol: TCP}]
YAML
  for spec in "9101 local region-a zone-a" "9102 local region-a zone-a" "9103 remote-1 region-a zone-b" \
              "9104 remote-1 region-a zone-b" "9105 remote-2 region-b zone-c" "9106 remote-2 region-b zone-c"; do
    set -- $spec
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: node-$1
  labels: {topology.istio.io/cluster: $2, topology.kubernetes.io/region: $3, topology.kubernetes.io/zone: $4}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: backend-$1
  namespace: bench
  labels: {multicluster.kubernetes.io/service-name: backend, multicluster.kubernetes.io/source-cluster: $2}
addressType: IPv4
ports: [{name: http, port: $1}]
endpoints:
- {addresses: ["127.0.0.1"], nodeName: node-$1}
YAML
  done
  exit 0
fi
gateway_and_route "{name: backend, port: 80}"
cat <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: bench}
spec:
  selector: {app: backend}
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80}]
YAML
i=0
for spec in "9101 region-a/zone-a" "9102 region-a/zone-a" "9103 region-a/zone-b" "9104 region-a/zone-b" \
            "9105 region-b/zone-c" "9106 region-b/zone-c"; do
  set -- $spec; i=$((i+1))
  cat <<YAML
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-$i, namespace: bench, labels: {app: backend}}
spec: {address: 127.0.0.1, locality: "$2", ports: {http: $1}}
YAML
done
[[ $MODE == big ]] || exit 0
cat <<'YAML'
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: big, namespace: bench}
spec:
  parentRefs: [{name: bench}]
  hostnames: [big.test]
  rules: [{backendRefs: [{name: big, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: big, namespace: bench}
spec:
  trafficDistribution: PreferClose
  ports: [{name: http, port: 80}]
YAML
python3 - <<'PY'
# 100 zones in 10 regions, one Node and one EndpointSlice of 100 endpoints per zone.
for z in range(100):
    region = f"region-{z // 10}"
    print(f"---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node-{z}\n  labels:\n"
          f"    topology.kubernetes.io/region: {region}\n    topology.kubernetes.io/zone: zone-{z}")
    print(f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: big-{z}\n"
          f"  namespace: bench\n  labels: {{kubernetes.io/service-name: big}}\naddressType: IPv4\n"
          f"ports: [{{name: http, port: 8080}}]\nendpoints:")
    for e in range(100):
        print(f"- {{addresses: [\"10.{z}.{e // 250}.{e % 250 + 1}\"], nodeName: node-{z}, zone: zone-{z}}}")
PY
