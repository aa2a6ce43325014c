#!/usr/bin/env bash
# End-to-end scenarios on the kind cluster of .github/workflows/e2e.yml.
set -euo pipefail
ns=purelb-e2e
kubectl create namespace "$ns"
kubectl -n "$ns" create deployment echo --image=registry.k8s.io/e2e-test-images/agnhost:2.53 --replicas=2 \
  -- /agnhost netexec --http-port=8080
kubectl -n "$ns" expose deployment echo --type=LoadBalancer --port=80 --target-port=8080
kubectl -n "$ns" rollout status deploy/echo --timeout=3m

echo "== 1. the Service gets an address from the pool"
for _ in $(seq 60); do
  ip=$(kubectl -n "$ns" get svc echo -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
  [ -n "$ip" ] && break; sleep 2
done
[ -n "$ip" ] || { echo "no address"; exit 1; }
kubectl -n "$ns" get svc echo -o jsonpath='{.metadata.annotations}'; echo

echo "== 2. it is announced by one node and reachable from the kind network"
for _ in $(seq 60); do
  holder=$(kubectl -n "$ns" get svc echo -o jsonpath='{.metadata.annotations.purelb\.io/announcing-IPv4}')
  [ -n "$holder" ] && break; sleep 2
done
echo "held by: ${holder:?not announced}"
docker run --rm --network kind curlimages/curl:8.10.1 -sf --retry 10 --retry-all-errors "http://$ip/hostname"

echo "== 3. failover: drain the holder's agent, the address moves and stays reachable"
node=${holder%%,*}
kubectl -n purelb-system delete pod --field-selector "spec.nodeName=$node" -l app.kubernetes.io/component=agent --wait=false
docker run --rm --network kind curlimages/curl:8.10.1 -sf --retry 20 --retry-all-errors "http://$ip/hostname"

echo "== 4. release: deleting the Service frees the address"
kubectl -n "$ns" delete svc echo
kubectl -n purelb-system get servicegroup default -o jsonpath='{.status.allocatedIPv4}' | grep -qx 0
echo "e2e scenarios passed"
