#!/usr/bin/env bash
# Builds the Helm CLI pinned in tools/helm/go.mod (helm.sh/helm/v3/cmd/helm, from the Go module
# proxy only) and caches it outside the repository, keyed by a hash of go.mod, go.sum and the Go
# toolchain, like tests/e2e/build_control_plane.sh does for the control plane.
# Prints the path of the helm binary on its last line. GPUPACK_BIN_CACHE overrides
# ~/.cache/gpupack/bin. First build on 2 cores: about 3-4 minutes; later calls: instant.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
key="$(cat "$here/go.mod" "$here/go.sum" <(go env GOVERSION) | sha256sum | cut -c1-12)"
version="$(awk '$1 == "helm.sh/helm/v3" { print $2; exit }' "$here/go.mod")"
root="${GPUPACK_BIN_CACHE:-$HOME/.cache/gpupack/bin}"
cache="$root/helm-$version-$key"
mkdir -p "$cache"
exec 9>"$root/.helm.lock"
flock 9
if [[ ! -x "$cache/helm" ]]; then
  echo "building helm $version into $cache (the first build: about 3-4 min on 2 cores; later runs reuse it)" >&2
  cd "$here"
  # shellcheck source=../gobuild.sh
  source "$here/../gobuild.sh"
  CGO_ENABLED=0 GOFLAGS=-mod=readonly gobuild helm 1/1 "$cache/.helm.tmp" helm.sh/helm/v3/cmd/helm
  mv "$cache/.helm.tmp" "$cache/helm"
fi
echo "$cache/helm"
