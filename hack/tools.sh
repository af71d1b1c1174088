#!/usr/bin/env bash
# Builds the pinned test-ground tools through `go` and the module proxy (no binary
# downloads) and caches them by version outside the checkout:
#   ${XDG_CACHE_HOME:-~/.cache}/tunnelop/tools/<tool>-<version>/bin/
# A tool whose directory carries a .complete marker is not built again, so a second run,
# or a fresh clone on the same machine, takes seconds.
#
# The project's own Go helpers (hack/health-check, hack/kstatus-check) are built the same way
# from their committed go.mod and go.sum, cached under their pinned dependency's version and a
# hash of their sources, so that an edit builds them again.
#
# Usage: hack/tools.sh [all|frp|etcd|kwok|helm|kubernetes|health-check|kstatus-check|gateway-api|path|gateway-api-crds]...
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${TUNNELOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tunnelop}
tools=$cache/tools
# Go's own caches live beside the tools so that disk use is visible in one place and can be
# reclaimed with one `rm -rf`.
export GOMODCACHE=${GOMODCACHE_OVERRIDE:-$cache/go/mod}
export GOCACHE=${GOCACHE_OVERRIDE:-$cache/go/build}
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=local
# frp pins a pseudo-version of its yamux fork that the checksum database does not serve;
# its hash is still recorded in the scratch go.sum on first download.
export GONOSUMDB=${GONOSUMDB:+$GONOSUMDB,}github.com/fatedier/yamux
export CGO_ENABLED=0
mkdir -p "$tools" "$GOMODCACHE" "$GOCACHE"

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# dir_of TOOL VERSION -> the cache directory of one tool version
dir_of() { printf '%s/%s-%s' "$tools" "$1" "$2"; }

# done_or_build TOOL VERSION FUNCTION: runs FUNCTION in a scratch wrapper module unless cached.
done_or_build() {
  local tool=$1 version=$2 fn=$3 dir
  dir=$(dir_of "$tool" "$version")
  if [[ -f $dir/.complete ]]; then
    log "$tool $version: cached in $dir"
    return 0
  fi
  log "$tool $version: building (this can take a while; progress follows)"
  local start=$SECONDS work
  work=$(mktemp -d "$tools/.build-$tool-XXXXXX")
  rm -rf "$dir.partial" && mkdir -p "$dir.partial/bin"
  if ( cd "$work" && "$fn" "$version" "$dir.partial/bin" ); then
    rm -rf "$dir" && mv "$dir.partial" "$dir"
    printf 'built %s in %ss\n' "$(date -u +%FT%TZ)" "$((SECONDS - start))" > "$dir/.complete"
    rm -rf "$work"
    log "$tool $version: done in $((SECONDS - start))s"
  else
    log "$tool $version: FAILED after $((SECONDS - start))s (scratch module kept in $work)"
    return 1
  fi
}

new_module() { # new_module NAME: a scratch wrapper module in the current directory
  printf 'module tunnelop.dev/toolbuild/%s\n\ngo 1.26\n' "$1" > go.mod
  printf 'package tools\n' > tools.go
}

gobuild() { # gobuild OUT LDFLAGS PKG...: the build, with a progress line every 50 packages
  local out=$1 ldflags=$2; shift 2
  local rc=0
  go build -v -trimpath -ldflags "-s -w $ldflags" -o "$out" "$@" > build.log 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 20
    log "  ... $(wc -l < build.log) packages compiled, last: $(tail -n 1 build.log)"
  done
  wait "$pid" || rc=$?
  if [[ $rc -ne 0 ]]; then tail -n 30 build.log >&2; fi
  return "$rc"
}

build_frp() {
  local version=$1 bin=$2
  new_module frp
  go mod download -json "github.com/fatedier/frp@$version" > frp.json
  local gomod
  gomod=$(python3 -c 'import json,sys; print(json.load(open("frp.json"))["GoMod"])')
  # frp pins a fork of yamux with a replace directive, which only a main module can apply:
  # copy every replace line of frp's go.mod into ours.
  grep -E '^replace ' "$gomod" >> go.mod || true
  go get "github.com/fatedier/frp@$version"
  gobuild "$bin/" "" -tags noweb github.com/fatedier/frp/cmd/frps github.com/fatedier/frp/cmd/frpc
}

build_etcd() {
  local version=$1 bin=$2
  new_module etcd
  # The server module points at its siblings with relative replace directives; as a
  # dependency of ours those are ignored and the released siblings of the same tag are used.
  go get "go.etcd.io/etcd/server/v3@$version" "go.etcd.io/etcd/etcdctl/v3@$version"
  gobuild "$bin/etcd" "-X go.etcd.io/etcd/api/v3/version.GitSHA=$version" go.etcd.io/etcd/server/v3
  gobuild "$bin/etcdctl" "" go.etcd.io/etcd/etcdctl/v3
}

build_kwok() {
  local version=$1 bin=$2
  GOBIN=$bin go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$version" \
    "sigs.k8s.io/kwok/cmd/kwok@$version" "sigs.k8s.io/kwok/cmd/kwokctl@$version"
}

build_helm() {
  local version=$1 bin=$2
  new_module helm
  go get "helm.sh/helm/v3@$version"
  # helm learns the Kubernetes version it was built against from ldflags (its Makefile
  # derives them from client-go: major 0 -> 1, minor as is).
  local cg minor
  cg=$(go list -m -f '{{.Version}}' k8s.io/client-go)
  minor=$(echo "$cg" | cut -d. -f2)
  gobuild "$bin/helm" "-X helm.sh/helm/v3/internal/version.version=$version \
    -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" helm.sh/helm/v3/cmd/helm
}

build_kubernetes() {
  local version=$1 bin=$2
  new_module kubernetes
  go mod download -json "k8s.io/kubernetes@$version" > k8s.json
  local gomod staging v0
  gomod=$(python3 -c 'import json,sys; print(json.load(open("k8s.json"))["GoMod"])')
  v0=v0.${version#v1.}
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
  # ./staging/src/...; as a dependency those replaces are ignored, so map every staging
  # module (derived from the downloaded go.mod, not hard-coded) to its published v0.Y.Z.
  staging=$(sed -nE 's#^[[:space:]]*(k8s\.io/[^[:space:]]+) => \./staging/src/.*#\1#p' "$gomod")
  [[ -n $staging ]] || { log "no staging modules found in $gomod"; return 1; }
  {
    echo
    echo "require k8s.io/kubernetes $version"
    echo "replace ("
    for m in $staging; do echo "	$m => $m $v0"; done
    echo ")"
  } >> go.mod
  log "kubernetes: $(echo "$staging" | wc -l) staging modules mapped to $v0; resolving the module graph"
  go mod download
  local minor=${version#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%FT%TZ)
  local ld=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  gobuild "$bin/" "$ld" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

# source_version DIR PIN: the cache version of the helper module hack/DIR, whose go.mod must
# require PIN ("module version", from versions.env): the pin, then a hash of the sources.
source_version() {
  local dir=$here/$1 module=${2% *} version=${2#* }
  if ! grep -Eq "^[[:space:]]*(require[[:space:]]+)?$module $version([[:space:]]|$)" "$dir/go.mod"; then
    log "hack/$1/go.mod does not require $module $version (hack/versions.env): run" \
      "\`go get $module@$version\` in hack/$1, or change versions.env"
    return 1
  fi
  printf '%s-%s' "$version" "$(cd "$dir" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-12)"
}

# build_helper DIR BIN: builds the helper module hack/DIR into BIN/DIR, from its go.sum only.
build_helper() {
  local name=$1 bin=$2
  (cd "$here/$name" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$bin/$name" .)
}
build_health_check() { build_helper health-check "$2"; }
build_kstatus_check() { build_helper kstatus-check "$2"; }
HEALTH_CHECK_PIN="github.com/yuin/gopher-lua $GOPHER_LUA_VERSION"
KSTATUS_CHECK_PIN="sigs.k8s.io/cli-utils $CLI_UTILS_VERSION"

build_gateway_api() {
  # Not a binary: the standard channel's CRDs, copied from the module the proxy serves
  # (config/crd/standard in its zip; TCPRoute and UDPRoute are v1 there since v1.6).
  local version=$1 bin=$2 dir
  dir=$(go mod download -json "sigs.k8s.io/gateway-api@$version" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$bin/../crds"
  cp "$dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$bin/../crds/"
  # The channel's ValidatingAdmissionPolicy (against mixing channels) is no CRD.
  rm -f "$bin"/../crds/*_vap_*.yaml
  chmod u+w "$bin"/../crds/*.yaml
}

# `path`: prints one PATH fragment with every cached tool's bin directory.
print_path() {
  local health kstatus
  health=$(source_version health-check "$HEALTH_CHECK_PIN")
  kstatus=$(source_version kstatus-check "$KSTATUS_CHECK_PIN")
  printf '%s:%s:%s:%s:%s:%s:%s\n' "$(dir_of kubernetes "$KUBERNETES_VERSION")/bin" \
    "$(dir_of etcd "$ETCD_VERSION")/bin" "$(dir_of kwok "$KWOK_VERSION")/bin" \
    "$(dir_of helm "$HELM_VERSION")/bin" "$(dir_of frp "$FRP_VERSION")/bin" \
    "$(dir_of health-check "$health")/bin" "$(dir_of kstatus-check "$kstatus")/bin"
}

targets=("$@"); [[ ${#targets[@]} -gt 0 ]] || targets=(all)
for t in "${targets[@]}"; do
  case $t in
    path) print_path ;;
    frp) done_or_build frp "$FRP_VERSION" build_frp ;;
    etcd) done_or_build etcd "$ETCD_VERSION" build_etcd ;;
    kwok) done_or_build kwok "$KWOK_VERSION" build_kwok ;;
    helm) done_or_build helm "$HELM_VERSION" build_helm ;;
    kubernetes) done_or_build kubernetes "$KUBERNETES_VERSION" build_kubernetes ;;
    health-check)
      version=$(source_version health-check "$HEALTH_CHECK_PIN")
      done_or_build health-check "$version" build_health_check
      ;;
    kstatus-check)
      version=$(source_version kstatus-check "$KSTATUS_CHECK_PIN")
      done_or_build kstatus-check "$version" build_kstatus_check
      ;;
    gateway-api) done_or_build gateway-api "$GATEWAY_API_VERSION" build_gateway_api ;;
    # `gateway-api-crds`: the directory of the cached Gateway API CRDs.
    gateway-api-crds) printf '%s/crds\n' "$(dir_of gateway-api "$GATEWAY_API_VERSION")" ;;
    all)
      start=$SECONDS
      for x in frp etcd kwok helm kubernetes health-check kstatus-check gateway-api; do "$0" "$x"; done
      if (( SECONDS - start > 5 )); then
        # Something was built: Go's build cache (several GB for Kubernetes) has served its
        # purpose; the module cache stays so that a version bump does not download again.
        go clean -cache
      fi
      log "all tools ready in $((SECONDS - start))s: $(du -sh "$cache" | cut -f1) in $cache"
      ;;
    *)
      log "unknown target $t (one of: all frp etcd kwok helm kubernetes health-check" \
        "kstatus-check gateway-api path gateway-api-crds)"
      exit 2
      ;;
  esac
done
