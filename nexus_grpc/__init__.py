"""nexus-grpc: a gRPC decision engine for LLM request routing."""

__version__ = "0.1.0"
