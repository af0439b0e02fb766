"""Cluster mode: policies, labels and status in etcd (docs/cluster.md).

- ``layout``: the key layout and the JSON records under it (pure).
- ``selector``: Kubernetes-style label selectors (pure).
- ``merge``: the policies that select a node, merged into one Policy (pure).
- ``etcd``: the one thin async seam over the etcd client library (aetcd).
- ``sync``: the ClusterSync actor: etcd -> merge -> Datapath, and status back.
- ``admin``: the ClusterAdmin actor: the API's reads and writes of etcd.
- ``overview``: what ``fwd cluster status`` / ``wait`` show, from the status records (pure).
- ``fake``: a recording Datapath for tests and the benchmark.

Local mode imports only the pure modules (through the API: selector, layout,
overview), never aetcd.
"""
