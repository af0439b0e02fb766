"""Cluster mode: policies, labels and status in etcd (docs/cluster.md).

- ``layout``: the key layout and the JSON records under it (pure).
- ``selector``: Kubernetes-style label selectors (pure).
- ``merge``: the policies that select a node, merged into one Policy (pure).
- ``etcd``: the one thin async seam over the etcd client library (aetcd).
- ``overview``: what ``fwd cluster status`` / ``wait`` show, from the status records (pure).
- ``view``: what one node selects, kept from etcd's watch events.

The actors live with the others: fwd.actors.cluster_sync (etcd -> merge ->
Datapath, and status back), fwd.actors.cluster_admin (the API's reads and
writes of etcd) and fwd.actors.cluster (builds both for the supervisor).

Local mode imports only the pure modules (through the API: selector, layout,
overview), never aetcd.
"""
