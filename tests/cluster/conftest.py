"""Cluster tests run against a real etcd (tests/etcd.py), started per test."""

from tests.etcd import etcd_server  # noqa: F401  (the fixture)
