#!/usr/bin/env bash
# Builds cdicheck (tests/device_plugin/go/cdicheck: the CDI project's own Go package reading
# our CDI specs, as containerd and CRI-O do) from the Go module proxy only, and caches it
# outside the repository keyed by a hash of its sources, go.mod, go.sum and the Go toolchain,
# like tools/helm/build.sh. Prints the path of the binary on its last line.
# GPUPACK_BIN_CACHE overrides ~/.cache/gpupack/bin. First build on 2 cores: about half a
# minute (a few small modules); later calls: instant.
set -euo pipefail
here="$(cd "$(dirname "$0")/../tests/device_plugin/go/cdicheck" && pwd)"
command -v go >/dev/null || { echo "cdicheck: Go is not installed (go is not on PATH); the CDI spec tests need it: install Go >= 1.26 (https://go.dev/dl/)" >&2; exit 3; }
key="$(cat "$here/go.mod" "$here/go.sum" $(find "$here" -name '*.go' | sort) <(go env GOVERSION) | sha256sum | cut -c1-12)"
root="${GPUPACK_BIN_CACHE:-$HOME/.cache/gpupack/bin}"
cache="$root/cdicheck-$key"
mkdir -p "$cache"
exec 9>"$root/.cdicheck.lock"
flock 9
if [[ ! -x "$cache/cdicheck" ]]; then
  echo "building cdicheck into $cache (the first build: about half a minute; later runs reuse it)" >&2
  cd "$here"
  # shellcheck source=gobuild.sh
  source "$here/../../../../tools/gobuild.sh"
  CGO_ENABLED=0 GOFLAGS=-mod=readonly gobuild cdicheck 1/1 "$cache/.cdicheck.tmp" .
  mv "$cache/.cdicheck.tmp" "$cache/cdicheck"
fi
echo "$cache/cdicheck"
