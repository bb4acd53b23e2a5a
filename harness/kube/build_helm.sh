#!/usr/bin/env bash
# Build helm (the chart tests' and the node's `helm install`), or return at
# once when this version is already cached.
#
# Built from its Go module for the same reason as the Kubernetes binaries
# (build_control_plane.sh): the Go module proxy is reachable where release
# downloads are not. The version is pinned here; the binary goes to
#   ${SIDECAR_INJECTOR_CACHE:-$HOME/.cache/sidecar-injector}/helm-<version>/helm
# and is never committed. The last line of stdout is that path.
#
#   build_helm.sh           build if needed, print the path
#   build_helm.sh --cached  print the path if cached, else exit 1 (no build)
set -euo pipefail

version=v4.3.2
name=helm
cache="${SIDECAR_INJECTOR_CACHE:-$HOME/.cache/sidecar-injector}"
dest="$cache/$name-$version"

if [[ -x "$dest/$name" ]]; then
    echo "$dest/$name"
    exit 0
fi
if [[ "${1:-}" == "--cached" ]]; then
    exit 1
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build_helm: 'go' is not on PATH; install Go 1.25 or newer" >&2
    exit 3
fi

mkdir -p "$cache"
# Same filesystem as $dest, so the final rename is atomic: a reader sees
# either no directory or a complete one.
work="$(mktemp -d "$cache/.$name-$version.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# CGO off: a static binary, no C toolchain needed. The version stamp makes
# `helm version` say which release this is (go install alone leaves it "v4.3").
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version"

now() { date +%s; }
echo "build_helm: building helm.sh/helm/v4 $version with $(go version)" >&2
t0=$(now)
# nice: the 2-core machines run tests and other builds alongside.
GOBIN="$work" nice -n 10 go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v4/cmd/helm@$version" >&2
t1=$(now)
echo "build_helm: took $((t1 - t0))s" >&2
"$work/$name" version >&2
chmod 755 "$work"

# A concurrent build of the same version that won the race is just as good.
if ! mv -T "$work" "$dest" 2>/dev/null; then
    [[ -x "$dest/$name" ]] || {
        echo "build_helm: could not move the build into $dest" >&2
        exit 1
    }
fi
trap - EXIT
echo "$dest/$name"
