// The nexus-grpc Go client: generated stubs (nexusv1/) and an example command (decide/).
// The module path is a placeholder: publish it under your repository's import path
// (`go mod edit -module ...`), or use it from a checkout with a `replace` directive.
// The versions are those of Debian 12's Go packages, which build.sh builds against offline;
// each is an upstream release (with the module proxy: `go mod tidy && go build ./...`).
module nexus-grpc.example/clients/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

require (
	github.com/golang/protobuf v1.5.2 // indirect
	golang.org/x/net v0.7.0 // indirect
	golang.org/x/sys v0.3.0 // indirect
	golang.org/x/text v0.7.0 // indirect
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013 // indirect
)
