"""Prometheus metrics.

- :mod:`.collector`: reads actor statistics and BPF counters at scrape time;
- :mod:`.kernel`: per-CPU counter maps, decoded and summed;
- :mod:`.addr`: ``HOST:PORT`` parsing, light enough for the CLI.

- :mod:`.grpc`: gRPC request durations, observed on the Api's server.

The HTTP endpoint (a thread) and its actor are fwd.actors.metrics. The package
imports nothing itself so ``fwd.metrics.addr`` stays cheap.
"""
