"""Telemetry: plain-integer aggregates on the hot path, exported at scrape time; decision log."""
