#!/usr/bin/env node
// Ask nexus-grpc for a decision and report the outcome, from Node (@grpc/grpc-js).
//   node decide.js [--target 127.0.0.1:50051] [--model gpt-4] [--tokens 1200] [--tenant team-a]
// Prints one JSON object: {"decision": <DecideResponse>, "outcome": <ReportOutcomeResponse>|null}.
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function args(argv) {
  const out = { target: "127.0.0.1:50051", model: "gpt-4", tokens: 0, tenant: "" };
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  return out;
}

const PROTOS = path.resolve(__dirname, "../../protos");
const definition = protoLoader.loadSync(
  ["nexus/v1/decision.proto", "nexus/v1/budget.proto"].map((f) => path.join(PROTOS, f)),
  { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true, includeDirs: [PROTOS] },
);
const nexus = grpc.loadPackageDefinition(definition).nexus.v1;

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 5000 }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

async function main() {
  const a = args(process.argv.slice(2));
  const client = new nexus.DecisionService(a.target, grpc.credentials.createInsecure());
  const requestId = `node-${process.pid}-${Date.now()}`;
  const decision = await call(client, "Decide", {
    request_id: requestId,
    model: a.model,
    estimated_input_tokens: Number(a.tokens),
    tenant: a.tenant,
  });
  let outcome = null;
  if (decision.decision === "route") {
    outcome = await call(client, "ReportOutcome", {
      request_id: requestId,
      backend_id: decision.route.backend_id,
      http_status: 200,
      input_tokens: Number(a.tokens),
      output_tokens: 10,
    });
  }
  client.close();
  process.stdout.write(JSON.stringify({ decision, outcome }) + "\n");
}

main().catch((err) => {
  process.stderr.write(`nexus-grpc node client: ${err.code !== undefined ? grpc.status[err.code] : ""} ${err.details || err.message}\n`);
  process.exit(1);
});
