#!/usr/bin/env bash
# The local test cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# the kwok controller as local processes (kwokctl, binary runtime) from the cached tools,
# bound to 127.0.0.1 only, with a few fake nodes that run Pods as Running and Ready.
#
# Usage: hack/cluster.sh up|down|status
# State lives in .cluster/ (git-ignored); the kubeconfig is .cluster/kubeconfig.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=versions.env
source "$repo/hack/versions.env"
state=$repo/.cluster
name=tunnelop
nodes=${TUNNELOP_FAKE_NODES:-3}
export KWOK_WORKDIR=$state/kwok
export PATH="$("$repo/hack/tools.sh" path):$PATH"
kubeconfig=$state/kubeconfig

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bin() { # bin NAME: absolute path of a cached tool, or a clear error
  local p; p=$(command -v "$1") || { log "$1 is missing: run 'make tools'"; exit 1; }
  printf '%s' "$p"
}

healthy() {
  [[ -f $kubeconfig ]] && kubectl --kubeconfig "$kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1
}

write_config() {
  mkdir -p "$state"
  cat > "$state/kwok.yaml" <<YAML
kind: KwokctlConfiguration
apiVersion: config.kwok.x-k8s.io/v1alpha1
options:
  runtime: binary
  kubeVersion: ${KUBERNETES_VERSION}
  etcdVersion: ${ETCD_VERSION#v}
  kwokVersion: ${KWOK_VERSION}
  # Every component listens on loopback only.
  bindAddress: 127.0.0.1
  kubeApiserverBinary: $(bin kube-apiserver)
  kubeControllerManagerBinary: $(bin kube-controller-manager)
  kubeSchedulerBinary: $(bin kube-scheduler)
  kubectlBinary: $(bin kubectl)
  etcdBinary: $(bin etcd)
  etcdctlBinary: $(bin etcdctl)
  kwokControllerBinary: $(bin kwok)
  cacheDir: $state/cache
  quietPull: true
  # RBAC and admission as in a real cluster: the operator's least-privilege roles and its
  # admission webhook are tested for real.
  kubeAuthorization: true
  kubeAdmission: true
  # Benchmarks measure the operator, not client-side throttling of the control plane.
  disableQPSLimits: true
componentsPatches:
- name: kube-apiserver
  extraArgs:
  # A webhook's Service reference is resolved through the Service's EndpointSlices, not its
  # cluster IP (nothing routes cluster IPs here: no kube-proxy). The relay-pod runner writes
  # the slices of the operator pods it runs (tests/support/relay_runner.py).
  - key: enable-aggregator-routing
    value: "true"
- name: kwok-controller
  extraArgs:
  # Pods with this label are the relay-pod runner's from start to end: it runs them and
  # reports their whole status, as a kubelet (tests/support/relay_runner.py). kwok would
  # report a Job's pod Succeeded at once, before anything ran in it. (Deprecated in favour
  # of Stages, which would mean restating every default Stage of kwok here.)
  - key: disregard-status-with-label-selector
    value: tunnelop.test/kubelet=relay-runner
YAML
}

up() {
  if healthy; then
    log "already running"
  else
    # A stale cluster (processes gone after a reboot, or a half-started one) is removed first.
    kwokctl delete cluster --name "$name" >/dev/null 2>&1 || true
    write_config
    local start=$SECONDS
    log "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok"
    kwokctl -v=WARN create cluster --name "$name" --config "$state/kwok.yaml" \
      --kubeconfig "$kubeconfig" --wait 2m >&2
    log "adding $nodes fake nodes"
    kwokctl -v=WARN scale node --name "$name" --replicas "$nodes" >&2
    kubectl --kubeconfig "$kubeconfig" wait --for=condition=Ready node --all --timeout=120s >&2
    # The default ServiceAccount must exist before Pods can be created in a namespace.
    until kubectl --kubeconfig "$kubeconfig" get serviceaccount default -n default >/dev/null 2>&1; do
      sleep 0.5
    done
    log "ready in $((SECONDS - start))s"
  fi
  cat >&2 <<MSG

The local cluster is running (API server on 127.0.0.1 only). Use it with:

  export KUBECONFIG=$kubeconfig PATH=$("$repo/hack/tools.sh" path):\$PATH
  kubectl get nodes

Stop it with: make cluster-down
MSG
}

down() {
  if kwokctl get clusters 2>/dev/null | grep -qx "$name"; then
    log "stopping the cluster"
    kwokctl -v=WARN delete cluster --name "$name" >&2
  else
    log "no cluster to stop"
  fi
  rm -f "$kubeconfig"
}

status() {
  if healthy; then
    kubectl --kubeconfig "$kubeconfig" get nodes
  else
    echo "not running"; return 1
  fi
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
