#!/usr/bin/env bash
# Builds the real programs the end-to-end tests run against, from the Go module proxy only,
# and caches them outside the repository:
#   etcd (go.etcd.io/etcd/server/v3), kube-apiserver, kube-controller-manager, kube-scheduler,
#   kubectl (k8s.io/kubernetes)
#   nodeagent (tests/e2e/go/nodeagent: the kubelet's device and DRA managers, see its doc comment)
# The control plane is keyed by the pinned versions (k8s.io/kubernetes, etcd, the replace block
# that pins the staging modules, the Go toolchain); a program added to go.mod's tool block is
# built alone into the same folder. The node agent is keyed by a hash of its sources and of
# go.mod/go.sum, so editing it rebuilds only it (seconds, with Go's build cache warm).
# Prints the cache folder (holding all six programs) on its last line; with --folder prints it
# and builds nothing.
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
cp_key="$( { echo "$k8s_version $etcd_version $go_version"; sed -n '/^replace (/,/^)/p' "$gomod"; } | sha256sum | cut -c1-12)"
root="${GPUPACK_BIN_CACHE:-$HOME/.cache/gpupack/bin}"
cache="$root/k8s-$k8s_version-$cp_key"
# --folder: only say where the binaries are (or would be), build nothing (bench/ uses this)
if [[ ${1:-} == --folder ]]; then echo "$cache"; exit 0; fi
agent_key="$(cat "$here/go/go.mod" "$here/go/go.sum" $(find "$here/go/nodeagent" -name '*.go' | sort) | sha256sum | cut -c1-16)"

mkdir -p "$root"
# one build at a time per cache (pytest sessions from several checkouts may share it)
exec 9>"$root/.lock"
flock 9

export CGO_ENABLED=0 GOFLAGS=-mod=readonly
cd "$here/go"
# shellcheck source=../../tools/gobuild.sh
source "$here/../../tools/gobuild.sh"
build() { # build <step> <package> <name>: into a temporary file, then renamed, so a binary is never half there
  gobuild "$3" "$1" "$cache/.$3.tmp" "$2"
  mv "$cache/.$3.tmp" "$cache/$3"
}
mkdir -p "$cache"
programs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3=etcd ./nodeagent)
missing=()
for pkg in "${programs[@]}"; do
  name="${pkg#*=}"; [[ $name == "$pkg" ]] && name="$(basename "$pkg")"
  if [[ $name == nodeagent ]]; then
    [[ -x "$cache/nodeagent" && "$(cat "$cache/nodeagent.key" 2>/dev/null)" == "$agent_key" ]] || missing+=("$pkg")
  else
    [[ -x "$cache/$name" ]] || missing+=("$pkg")
  fi
done
if (( ${#missing[@]} == ${#programs[@]} )); then
  echo "building the test control plane (k8s $k8s_version, etcd $etcd_version, $go_version) into $cache:" \
       "the first build downloads the Go modules and compiles ${#programs[@]} programs, about 31 min on 2 cores;" \
       "later runs reuse it" >&2
fi
step=0
for pkg in "${missing[@]}"; do
  step=$((step + 1))
  name="${pkg#*=}"; [[ $name == "$pkg" ]] && name="$(basename "$pkg")"
  build "$step/${#missing[@]}" "${pkg%%=*}" "$name"
  [[ $name == nodeagent ]] && echo "$agent_key" > "$cache/nodeagent.key"
done
echo "$cache"
