"""Thin adapters: wire (nexus.v1, Envoy) <-> domain, nothing else."""
