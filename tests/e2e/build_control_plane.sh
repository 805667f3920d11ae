#!/usr/bin/env bash
# Builds the real programs the end-to-end tests run against, from the Go module proxy only,
# and caches them outside the repository:
#   etcd (go.etcd.io/etcd/server/v3), kube-apiserver, kube-scheduler, kubectl (k8s.io/kubernetes)
#   nodeagent (tests/e2e/go/nodeagent: the kubelet's device manager, see its doc comment)
# The control plane is keyed by the pinned versions (k8s.io/kubernetes, etcd, the replace block
# that pins the staging modules, the Go toolchain); the node agent by a hash of its sources and
# of go.mod/go.sum, so editing it rebuilds only it (seconds, with Go's build cache warm).
# Prints the cache folder (holding all five programs) on its last line.
# First build on 2 cores: see docs/e2e.md. GPUPACK_BIN_CACHE overrides ~/.cache/gpupack/bin.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
gomod="$here/go/go.mod"
# go mod tidy keeps direct requires in a block: "<tab>k8s.io/kubernetes v1.37.2"
version_of() { awk -v m="$1" '($1 == m || ($1 == "require" && $2 == m)) { v = ($1 == "require") ? $3 : $2; if (v ~ /^v[0-9]/) { print v; exit } }' "$gomod"; }
k8s_version="$(version_of k8s.io/kubernetes)"
etcd_version="$(version_of go.etcd.io/etcd/server/v3)"
[[ -n $k8s_version && -n $etcd_version ]] || { echo "cannot read the k8s.io/kubernetes or etcd version from $gomod" >&2; exit 1; }
go_version="$(go env GOVERSION)"
cp_key="$( { echo "$k8s_version $etcd_version $go_version"; sed -n '/^replace (/,/^)/p;/^tool (/,/^)/p' "$gomod"; } | sha256sum | cut -c1-12)"
root="${GPUPACK_BIN_CACHE:-$HOME/.cache/gpupack/bin}"
cache="$root/k8s-$k8s_version-$cp_key"
agent_key="$(cat "$here/go/go.mod" "$here/go/go.sum" $(find "$here/go/nodeagent" -name '*.go' | sort) | sha256sum | cut -c1-16)"

mkdir -p "$root"
# one build at a time per cache (pytest sessions from several checkouts may share it)
exec 9>"$root/.lock"
flock 9

export CGO_ENABLED=0 GOFLAGS=-mod=readonly
cd "$here/go"
build() { # build <package> <name>: into a temporary file, then renamed, so a binary is never half there
  go build -trimpath -ldflags='-s -w' -o "$cache/.$2.tmp" "$1"
  mv "$cache/.$2.tmp" "$cache/$2"
}
mkdir -p "$cache"
for pkg in k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3=etcd; do
  name="${pkg#*=}"; [[ $name == "$pkg" ]] && name="$(basename "$pkg")"
  pkg="${pkg%%=*}"
  if [[ ! -x "$cache/$name" ]]; then
    echo "building $name ($pkg, k8s $k8s_version, etcd $etcd_version, $go_version) into $cache; the first build takes many minutes" >&2
    build "$pkg" "$name"
  fi
done
if [[ ! -x "$cache/nodeagent" || "$(cat "$cache/nodeagent.key" 2>/dev/null)" != "$agent_key" ]]; then
  echo "building nodeagent into $cache" >&2
  build ./nodeagent nodeagent
  echo "$agent_key" > "$cache/nodeagent.key"
fi
echo "$cache"
