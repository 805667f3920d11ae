#!/usr/bin/env bash
# Builds the real control-plane programs the end-to-end tests run against, from the Go module
# proxy only, and caches them outside the repository keyed by the pinned versions.
#   etcd (go.etcd.io/etcd/server/v3), kube-apiserver, kube-scheduler, kubectl (k8s.io/kubernetes)
# Prints the cache folder on its last line. First build on 2 cores takes many minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
k8s_version="$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$here/go/go.mod")"
cache="${GPUPACK_BIN_CACHE:-$HOME/.cache/gpupack/bin}/k8s-$k8s_version-$(sha256sum "$here/go/go.sum" "$here/go/go.mod" $(find "$here/go" -name '*.go' | sort) | sha256sum | cut -c1-12)"
tools=(etcd kube-apiserver kube-scheduler kubectl)
missing=0
for t in "${tools[@]}" nodeagent; do [[ -x "$cache/$t" ]] || missing=1; done
if [[ $missing == 0 ]]; then echo "$cache"; exit 0; fi
mkdir -p "$cache.tmp"
cd "$here/go"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "building control plane $k8s_version into $cache (first time takes many minutes)" >&2
for pkg in k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl; do
  echo "  go build $pkg" >&2
  go build -trimpath -ldflags='-s -w' -o "$cache.tmp/$(basename "$pkg")" "$pkg"
done
echo "  go build go.etcd.io/etcd/server/v3 (etcd)" >&2
go build -trimpath -ldflags='-s -w' -o "$cache.tmp/etcd" go.etcd.io/etcd/server/v3
if [[ -d "$here/go/nodeagent" ]]; then
  echo "  go build ./nodeagent" >&2
  go build -trimpath -ldflags='-s -w' -o "$cache.tmp/nodeagent" ./nodeagent
else
  touch "$cache.tmp/nodeagent"; chmod +x "$cache.tmp/nodeagent"
fi
rm -rf "$cache"; mv "$cache.tmp" "$cache"
echo "$cache"
