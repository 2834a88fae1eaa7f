#!/usr/bin/env bash
# Build the Go client offline against Debian's Go packages (GOPATH mode, grpc-go 1.33):
#   clients/go/build.sh OUT_DIR        -> OUT_DIR/decide
# Needs: golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
#        protoc-gen-go protoc-gen-go-grpc protobuf-compiler
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
protos="$here/../../protos"
mkdir -p "$1"
out=$(cd "$1" && pwd)
gp="$out/gopath"
for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || { echo "go client: $tool is missing (./dev test installs it)" >&2; exit 1; }
done
rm -rf "$gp" && mkdir -p "$gp/src/decide"
files=(nexus/v1/types.proto nexus/v1/decision.proto nexus/v1/registry.proto nexus/v1/budget.proto nexus/v1/admin.proto)
mapping=""
for f in "${files[@]}"; do mapping="$mapping,M$f=nexus.local/nexusv1"; done
protoc -I "$protos" --go_out="$gp/src" --go_opt="paths=import${mapping}" \
  --go-grpc_out="$gp/src" --go-grpc_opt="paths=import${mapping}" "${files[@]}"
cp "$here/decide/main.go" "$gp/src/decide/"
cd "$gp/src/decide"
GO111MODULE=off GOPATH="$gp:/usr/share/gocode" GOPROXY=off GOFLAGS= GOCACHE="$out/gocache" go build -o "$out/decide" .
