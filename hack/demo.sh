#!/usr/bin/env bash
# `make demo`: the main job on a fresh machine. make builds what is missing first (the venv
# and the tools); this starts the local cluster, then hands over to hack/demo.py, which
# installs tunnelop with Helm, runs relays, tunnels and traffic, and cleans up.
#
# Usage: hack/demo.sh [--check]
#   --check   run unattended: verify the traffic, print the figures, clean up, exit 0 or 1
# The cluster is stopped at the end only if this script started it.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PATH="$(hack/tools.sh path):$PATH"
export KUBECONFIG=$repo/.cluster/kubeconfig

step() { printf '\n==> %s\n' "$*"; }

started_cluster=
if hack/cluster.sh status >/dev/null 2>&1; then
  step "Using the local cluster that is already running (it is left running afterwards)"
else
  step "Starting the local cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
  started_cluster=1
  # Interrupted before the demo proper takes over: stop what was started.
  trap 'hack/cluster.sh down' EXIT
  trap 'exit 130' INT TERM
fi
if ! out=$(hack/cluster.sh up 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi
printf '%s\n' "$out" | grep '^\[cluster' | sed 's/^/    /' || true

# demo.py handles Ctrl-C itself (it gets it too) and stops the cluster as its last step.
trap - EXIT
trap ':' INT TERM
export PYTHONPATH=$repo/tests PYTHONUNBUFFERED=1
code=0
.venv/bin/python hack/demo.py "$@" ${started_cluster:+--stop-cluster} || code=$?
if [[ -n $started_cluster ]] && hack/cluster.sh status >/dev/null 2>&1; then
  # demo.py ended before its clean-up (a crash): the cluster goes all the same.
  trap '' INT
  hack/cluster.sh down 2>&1 | sed 's/^/    /'
fi
exit "$code"
