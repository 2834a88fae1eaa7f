#!/usr/bin/env bash
# Regenerate the committed Go stubs in nexusv1/ from ../../protos (protoc-gen-go v1.28.1 and
# protoc-gen-go-grpc 1.0, Debian's: `./dev test` installs them). The test suite regenerates them
# into a scratch directory and fails when the committed ones differ.
#   clients/go/gen.sh [OUT_DIR]        (default: clients/go/nexusv1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
protos="$here/../../protos"
out=${1:-"$here/nexusv1"}
module=$(sed -n 's/^module //p' "$here/go.mod")
for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || { echo "go client: $tool is missing (./dev test installs it)" >&2; exit 1; }
done
files=(nexus/v1/types.proto nexus/v1/decision.proto nexus/v1/registry.proto nexus/v1/budget.proto nexus/v1/admin.proto)
mapping=""
for f in "${files[@]}"; do mapping="$mapping,M$f=$module/nexusv1;nexusv1"; done
mkdir -p "$out"
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
protoc -I "$protos" --go_out="$scratch" --go_opt="paths=source_relative${mapping}" \
  --go-grpc_out="$scratch" --go-grpc_opt="paths=source_relative${mapping}" "${files[@]}"
rm -f "$out"/*.pb.go
cp "$scratch"/nexus/v1/*.pb.go "$out/"
