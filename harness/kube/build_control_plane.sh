#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager for the e2e control plane,
# or return at once when this version is already cached.
#
#   build_control_plane.sh           kube-apiserver, kube-controller-manager
#   build_control_plane.sh node      kubelet, kube-scheduler, kube-proxy (the
#                                    real node, harness/kube/node.py), cached in
#                                    a directory of their own so that adding
#                                    them never rebuilds or races the others
#
# Why build from source: the e2e tests need a real apiserver (admission chain,
# webhook client, RBAC) but no kubelet or container runtime, and the only
# network CI has is the Go module proxy and a few package registries, so the
# release tarballs are out of reach while `go build` of the published
# k8s.io/kubernetes module is not.
#
# The version is whatever harness/kube/controlplane/go.mod pins, so that file is
# the single place to change it. Binaries go to
#   ${SIDECAR_INJECTOR_CACHE:-$HOME/.cache/sidecar-injector}/kube-<version>/
# and are never committed. The last line of stdout is that directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_dir="$here/controlplane"

version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$module_dir/go.mod")"
if [[ -z "$version" ]]; then
    version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$module_dir/go.mod")"
fi
if [[ ! "$version" =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]]; then
    echo "build_control_plane: cannot read the k8s.io/kubernetes version from $module_dir/go.mod" >&2
    exit 2
fi
major="${BASH_REMATCH[1]}"
minor="${BASH_REMATCH[2]}"

cache="${SIDECAR_INJECTOR_CACHE:-$HOME/.cache/sidecar-injector}"
case "${1:-control-plane}" in
    control-plane)
        dest="$cache/kube-$version"
        binaries=(kube-apiserver kube-controller-manager)
        ;;
    node)
        dest="$cache/kube-node-$version"
        binaries=(kubelet kube-scheduler kube-proxy)
        ;;
    *)
        echo "usage: build_control_plane.sh [control-plane|node]" >&2
        exit 2
        ;;
esac

cached() {
    local b
    for b in "${binaries[@]}"; do
        [[ -x "$dest/$b" ]] || return 1
    done
}

if cached; then
    echo "$dest"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build_control_plane: 'go' is not on PATH; install Go $(awk '$1 == "go" {print $2}' "$module_dir/go.mod") or newer" >&2
    exit 3
fi

mkdir -p "$cache"
# Same filesystem as $dest, so the final rename is atomic: a reader sees
# either no directory or a complete one, never a half-written binary.
work="$(mktemp -d "$cache/.${dest##*/}.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cd "$module_dir"
# CGO off: none of the binaries needs it and it spares CI a C toolchain.
# -mod=readonly: go.sum is committed; a build must never rewrite it.
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly -buildvcs=false"

# Without these stamps the binaries report v0.0.0-master, which kubectl
# flags as version skew and which tells a log reader nothing.
pkg=k8s.io/component-base/version
ldflags="-s -w"
ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"

now() { date +%s; }
echo "build_control_plane: building k8s.io/kubernetes $version with $(go version)" >&2
t0=$(now)
go mod download >&2
t1=$(now)
echo "build_control_plane: module download took $((t1 - t0))s" >&2
packages=()
for b in "${binaries[@]}"; do packages+=("k8s.io/kubernetes/cmd/$b"); done
go build -trimpath -ldflags "$ldflags" -o "$work/" "${packages[@]}" >&2
t2=$(now)
echo "build_control_plane: compile of ${binaries[*]} took $((t2 - t1))s; total $((t2 - t0))s" >&2
"$work/${binaries[0]}" --version >&2
# mktemp made it owner-only; the cache is meant to be readable like any install.
chmod 755 "$work"

# mv -T refuses a non-empty target; if a concurrent build won the race its
# result is just as good, so keep it and drop ours.
if ! mv -T "$work" "$dest" 2>/dev/null; then
    cached || { echo "build_control_plane: could not move the build into $dest" >&2; exit 1; }
fi
trap - EXIT
echo "$dest"
