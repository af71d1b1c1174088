#!/usr/bin/env bash
# `make demo`: the main job on a fresh machine. It builds what is missing (make does that
# before calling this), starts the local cluster, installs the tunnelop CRDs and shows what
# is running. The operator and its relays join the demo as they land.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="$(hack/tools.sh path):$PATH"
export KUBECONFIG=$repo/.cluster/kubeconfig

step() { printf '\n==> %s\n' "$*"; }

step "Starting the local cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
hack/cluster.sh up

if compgen -G "crds/*.yaml" >/dev/null; then
  step "Installing the tunnelop CRDs"
  kubectl apply --server-side -f crds/
  kubectl wait --for=condition=Established -f crds/ --timeout=60s
fi

step "What is running"
kubectl version
kubectl get nodes -o wide
kubectl get crd 2>/dev/null | grep -E 'NAME|tunnelop' || true
kubectl api-resources --categories=tunnelop 2>/dev/null || true

cat <<MSG

The local cluster keeps running. Try it:

  export KUBECONFIG=$KUBECONFIG PATH=$(hack/tools.sh path):\$PATH
  kubectl get nodes

Stop it with: make cluster-down
MSG
