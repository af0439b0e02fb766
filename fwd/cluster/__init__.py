"""Cluster mode (issue 6): policies and node status in etcd."""
