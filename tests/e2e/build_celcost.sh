#!/usr/bin/env bash
# Build celcost (tests/e2e/celcost/), which evaluates CEL in the API
# server's environment and counts its cost, or return at once when cached.
#
# The cache key is a hash of the inputs: this script, go.mod, go.sum and the
# Go sources. Any change to them builds anew into its own directory, so an
# edited main.go can never be served by a stale binary, and two worktrees with
# different sources do not overwrite each other. The binary goes to
#   ${SIDECAR_INJECTOR_CACHE:-$HOME/.cache/sidecar-injector}/celcost-<key>/celcost
# and is never committed. The last line of stdout is that path.
#
#   build_celcost.sh           build if needed, print the path
#   build_celcost.sh --cached  print the path if cached, else exit 1 (no build)
set -euo pipefail
export LC_ALL=C # glob and sort order of the hashed inputs

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module_dir="$here/celcost"
name=celcost

inputs=("$here/build_celcost.sh" "$module_dir/go.mod" "$module_dir/go.sum" "$module_dir"/*.go)
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
if [[ "${1:-}" == "--cached" ]]; then
    exit 1
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build_celcost: 'go' is not on PATH; install Go $(awk '$1 == "go" {print $2}' "$module_dir/go.mod") or newer" >&2
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
echo "build_celcost: building $name ($key) with $(go version)" >&2
t0=$(now)
go mod download >&2
t1=$(now)
echo "build_celcost: module download took $((t1 - t0))s" >&2
# nice: the 2-core machines run tests and other builds alongside.
nice -n 10 go build -trimpath -ldflags "-s -w" -o "$work/$name" . >&2
t2=$(now)
echo "build_celcost: compile took $((t2 - t1))s; total $((t2 - t0))s" >&2
chmod 755 "$work"

# A concurrent build of the same key that won the race is just as good.
if ! mv -T "$work" "$dest" 2>/dev/null; then
    [[ -x "$dest/$name" ]] || {
        echo "build_celcost: could not move the build into $dest" >&2
        exit 1
    }
fi
trap - EXIT
echo "$dest/$name"
