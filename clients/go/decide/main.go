// Command decide asks nexus-grpc for a decision and reports the outcome, from Go.
//
//	decide -target 127.0.0.1:50051 -model gpt-4 -tokens 1200 [-tenant team-a]
//
// It prints one JSON object: {"decision": <DecideResponse>, "outcome": <ReportOutcomeResponse>|null}.
// Build it with ./build.sh (stubs generated from ../../protos with protoc-gen-go and protoc-gen-go-grpc).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	nexusv1 "nexus.local/nexusv1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "nexus-grpc address")
	model := flag.String("model", "gpt-4", "model to route")
	tokens := flag.Uint("tokens", 0, "estimated input tokens")
	tenant := flag.String("tenant", "", "budget scope")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, *target, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		fmt.Fprintf(os.Stderr, "nexus-grpc go client: dial %s: %v\n", *target, err)
		os.Exit(1)
	}
	defer conn.Close()
	client := nexusv1.NewDecisionServiceClient(conn)

	requestID := fmt.Sprintf("go-%d-%d", os.Getpid(), time.Now().UnixNano())
	decision, err := client.Decide(ctx, &nexusv1.DecideRequest{
		RequestId:            requestID,
		Model:                *model,
		EstimatedInputTokens: uint32(*tokens),
		Tenant:               *tenant,
	})
	if err != nil {
		st := status.Convert(err)
		fmt.Fprintf(os.Stderr, "nexus-grpc go client: %s %s\n", st.Code(), st.Message())
		os.Exit(1)
	}
	outcome := "null"
	if route := decision.GetRoute(); route != nil {
		status200 := uint32(200)
		in, out := uint32(*tokens), uint32(10)
		resp, err := client.ReportOutcome(ctx, &nexusv1.ReportOutcomeRequest{
			RequestId:    requestID,
			BackendId:    route.BackendId,
			HttpStatus:   &status200,
			InputTokens:  &in,
			OutputTokens: &out,
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "nexus-grpc go client: report outcome: %v\n", err)
			os.Exit(1)
		}
		outcome = marshal(resp)
	}
	fmt.Printf("{\"decision\": %s, \"outcome\": %s}\n", marshal(decision), outcome)
}

func marshal(m proto.Message) string {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return "null"
	}
	return string(b)
}
