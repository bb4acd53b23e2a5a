#!/usr/bin/env bash
# Build one of the e2e tests' Go tools, or return at once when this exact
# source is cached: xds-testserver (tests/e2e/xds/, the xDS management server
# of the pod-in-a-box xDS tests) or celcost (tests/e2e/celcost/, which
# evaluates CEL in the API server's environment and counts its cost).
#
# The cache key is a hash of the inputs: this script, go.mod, go.sum and the
# Go sources. Any change to them builds anew into its own directory, so an
# edited main.go can never be served by a stale binary, and two worktrees with
# different sources do not overwrite each other. The binary goes to
#   ${SIDECAR_INJECTOR_CACHE:-$HOME/.cache/sidecar-injector}/<name>-<key>/<name>
# and is never committed. The last line of stdout is that path.
#
#   build_go_tool.sh DIR NAME           build tests/e2e/DIR as NAME if needed, print the path
#   build_go_tool.sh DIR NAME --cached  print the path if cached, else exit 1 (no build)
set -euo pipefail
export LC_ALL=C # glob and sort order of the hashed inputs

if [[ $# -lt 2 || ! "$1" =~ ^[a-z0-9-]+$ || ! "$2" =~ ^[a-z0-9-]+$ ]]; then
    echo "usage: build_go_tool.sh DIR NAME [--cached] (DIR a folder of tests/e2e)" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_dir="$here/$1"
name="$2"
mode="${3:-}"
[[ -f "$module_dir/go.mod" ]] || {
    echo "build_go_tool: no Go module in $module_dir" >&2
    exit 2
}

inputs=("$here/build_go_tool.sh" "$module_dir/go.mod" "$module_dir/go.sum" "$module_dir"/*.go)
key="$(
    for f in "${inputs[@]}"; do
        printf '%s\n' "${f#"$here"/}"
        sha256sum <"$f"
    done | sha256sum | cut -c1-16
)"

cache="${SIDECAR_INJECTOR_CACHE:-$HOME/.cache/sidecar-injector}"
dest="$cache/$name-$key"

if [[ -x "$dest/$name" ]]; then
    echo "$dest/$name"
    exit 0
fi
if [[ "$mode" == "--cached" ]]; then
    exit 1
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build_go_tool: 'go' is not on PATH; install Go $(awk '$1 == "go" {print $2}' "$module_dir/go.mod") or newer" >&2
    exit 3
fi

mkdir -p "$cache"
# Same filesystem as $dest, so the final rename is atomic: a reader sees
# either no directory or a complete one.
work="$(mktemp -d "$cache/.$name-$key.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cd "$module_dir"
# CGO off: a static binary, no C toolchain needed.
# -mod=readonly: go.sum is committed; a build must never rewrite it.
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly -buildvcs=false"

now() { date +%s; }
echo "build_go_tool: building $name ($key) with $(go version)" >&2
t0=$(now)
go mod download >&2
t1=$(now)
echo "build_go_tool: module download took $((t1 - t0))s" >&2
# nice: the 2-core machines run tests and other builds alongside.
nice -n 10 go build -trimpath -ldflags "-s -w" -o "$work/$name" . >&2
t2=$(now)
echo "build_go_tool: compile took $((t2 - t1))s; total $((t2 - t0))s" >&2
chmod 755 "$work"

# A concurrent build of the same key that won the race is just as good.
if ! mv -T "$work" "$dest" 2>/dev/null; then
    [[ -x "$dest/$name" ]] || {
        echo "build_go_tool: could not move the build into $dest" >&2
        exit 1
    }
fi
trap - EXIT
echo "$dest/$name"
