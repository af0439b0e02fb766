"""Prometheus metrics.

- :mod:`.collector`: reads actor statistics and BPF counters at scrape time;
- :mod:`.kernel`: per-CPU counter maps, decoded and summed;
- :mod:`.server`: the HTTP endpoint (a thread) and its actor;
- :mod:`.addr`: ``HOST:PORT`` parsing, light enough for the CLI.

gRPC request durations are observed in :mod:`fwd.metrics.grpc`. The package
imports nothing itself so ``fwd.metrics.addr`` stays cheap.
"""
