"""The registry of backends with their live state; health probes."""
