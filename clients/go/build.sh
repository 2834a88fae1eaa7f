#!/usr/bin/env bash
# Build the Go client (module mode, offline) against Debian's Go packages:
#   clients/go/build.sh OUT_DIR        -> OUT_DIR/decide
# The module (go.mod, the committed stubs in nexusv1/, decide/) is copied to OUT_DIR/src and built
# with -mod=vendor from a vendor/ directory that points at Debian's sources in /usr/share/gocode:
# no module proxy, no checksum database. A team with the proxy runs `go mod tidy && go build ./...`
# instead (the versions in go.mod are the Debian ones, which are upstream releases).
# Needs: golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
command -v go >/dev/null || { echo "go client: go is missing (./dev test installs golang-go)" >&2; exit 1; }
gocode=/usr/share/gocode/src
# module path, version (Debian's package of it), go version of its go.mod
modules=(
  "google.golang.org/grpc v1.33.3 1.11"
  "google.golang.org/protobuf v1.28.1 1.11"
  "github.com/golang/protobuf v1.5.2 1.9"
  "google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013 1.11"  # Debian: git 20200413
  "golang.org/x/net v0.7.0 1.17"
  "golang.org/x/sys v0.3.0 1.17"
  "golang.org/x/text v0.7.0 1.17"
)
src="$out/src"
rm -rf "$src" && mkdir -p "$src/vendor"
cp -r "$here/go.mod" "$here/nexusv1" "$here/decide" "$src/"
required=$(sed -n 's/^\t\([^ ]*\) .*/\1/p' "$here/go.mod")
: > "$src/vendor/modules.txt"
for entry in "${modules[@]}"; do
  read -r path version gover <<< "$entry"
  [ -d "$gocode/$path" ] || { echo "go client: $gocode/$path is missing (install the Debian Go packages)" >&2; exit 1; }
  mkdir -p "$src/vendor/$(dirname "$path")"
  ln -s "$gocode/$path" "$src/vendor/$path"
  {
    echo "# $path $version"
    if grep -qx "$path" <<< "$required"; then echo "## explicit; go $gover"; else echo "## go $gover"; fi
    # every package of the module: a directory with Go files that are not tests
    (cd "$gocode/$path" && find . -name testdata -prune -o -name '*.go' ! -name '*_test.go' -printf '%h\n') \
      | sort -u | sed "s|^\.|$path|"
  } >> "$src/vendor/modules.txt"
done
cd "$src"
GOFLAGS=-mod=vendor GOPROXY=off GONOSUMDB="*" GOCACHE="$out/gocache" GOPATH="$out/gopath" \
  go build -o "$out/decide" ./decide
