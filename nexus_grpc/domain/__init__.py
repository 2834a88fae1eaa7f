"""Protocol-free values: requests, backends, decisions, reasons, enums. No grpc imports."""
