"""Cluster mode against an etcd that trusts only certificates: TLS, --client-cert-auth,
auth enabled by ``fwd cluster init`` (fwd.cluster.access), one certificate per node.

The ClusterSync actors here are the agent's, with recording datapaths; the
three-agent end-to-end version with real XDP is tests/e2e/test_cluster_tls.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Callable, Awaitable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from fwd.cluster.access import apply_plan, node_role, plan, user_roles
from fwd.cluster.credentials import CredentialsError, TlsCredentials, TlsFiles, load
from fwd.cluster.etcd import EtcdClient, EtcdError, PermissionDenied, check_transport
from fwd.cluster.layout import Layout, decode_status, encode_labels
from fwd.actors.cluster_sync import ClusterSync, SyncConfig
from fwd.testing import FakeDatapath
from fwd.messages import DatapathCommand
from tests.cluster.helpers import drop_rule, put_policy, wait_until
from tests.etcd import EtcdServer, make_etcd_certs, need_etcd

NODES = ("n0", "n1", "n2")
LAYOUT = Layout()


def creds(pki: Path, name: str, check_interval: float = 0.1) -> TlsCredentials:
    return TlsCredentials(
        TlsFiles(str(pki / "ca.pem"), str(pki / f"{name}.pem"), str(pki / f"{name}.key")),
        check_interval=check_interval,
    )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    need_etcd()
    return make_etcd_certs(tmp_path / "pki", *[a for n in NODES for a in ("--node", n)])


@pytest.fixture
def secure_etcd(tmp_path: Path, pki: Path) -> Iterator[EtcdServer]:
    """TLS-only etcd requiring client certificates, auth enabled by fwd cluster init."""
    server = EtcdServer(tmp_path / "etcd", pki=pki)
    try:
        server.start()

        async def init() -> None:
            async with EtcdClient(server.url, credentials=creds(pki, "root")) as root:
                done = await apply_plan(root, plan(LAYOUT, NODES))
                assert "auth enabled" in done and any(line.startswith("user n0") for line in done)

        anyio.run(init)
        yield server
    finally:
        server.cleanup()


def denied(result: object) -> bool:
    out = f"{getattr(result, 'stdout', '')}{getattr(result, 'stderr', '')}"
    return getattr(result, "returncode", 0) != 0 and "permission denied" in out


def test_transport_checks() -> None:
    with pytest.raises(EtcdError, match="plain text"):
        check_transport("http://127.0.0.1:2379", tls=False, insecure=False)
    assert check_transport("http://127.0.0.1:2379", tls=False, insecure=True) == "http"
    with pytest.raises(EtcdError, match="need https"):
        check_transport("http://127.0.0.1:2379", tls=True, insecure=True)
    with pytest.raises(EtcdError, match="only with http"):
        check_transport("https://127.0.0.1:2379", tls=True, insecure=True)
    with pytest.raises(EtcdError, match="not a mix"):
        check_transport("https://a:1,http://b:2", tls=True, insecure=False)
    assert check_transport("https://a:1,https://b:2", tls=True, insecure=False) == "https"
    with pytest.raises(EtcdError, match="need TLS credentials"):
        EtcdClient("https://127.0.0.1:2379")


def test_credentials_are_validated_and_reloaded(tmp_path: Path, pki: Path) -> None:
    with pytest.raises(CredentialsError, match="--etcd-key"):
        load(TlsFiles(str(pki / "ca.pem"), str(pki / "node-n0.pem"), ""))
    with pytest.raises(CredentialsError, match="no such file"):
        load(TlsFiles(str(pki / "ca.pem"), str(tmp_path / "absent.pem"), str(pki / "node-n0.key")))
    with pytest.raises(CredentialsError, match="etcd TLS"):  # a key that is not the certificate's
        load(TlsFiles(str(pki / "ca.pem"), str(pki / "node-n0.pem"), str(pki / "node-n1.key")))
    c = creds(pki, "node-n0", check_interval=0)
    assert c.identity.common_name == "n0" and c.version == 1
    assert not c.refresh()
    # Half-way through a rotation (new key, old certificate): refused, the old set kept.
    shutil.copy(pki / "node-n1.key", pki / "node-n0.key")
    assert not c.refresh() and c.version == 1 and "etcd TLS" in c.last_error
    make_etcd_certs(pki, "--node", "n0")  # a whole new pair for n0
    assert c.refresh() and c.version == 2 and c.last_error == ""
    assert c.identity.common_name == "n0"


def test_init_gives_each_node_only_its_own_keys(secure_etcd: EtcdServer, pki: Path, tmp_path: Path) -> None:
    e = secure_etcd
    # A node may write its own status and read policies and its own labels...
    assert e.etcdctl("put", "/fwd/labels/n0", "{}", identity="fwd-admin").returncode == 0
    assert e.etcdctl("put", "/fwd/status/n0", "{}", identity="node-n0").returncode == 0
    assert e.etcdctl("get", "--prefix", "/fwd/policies/", identity="node-n0").returncode == 0
    assert e.etcdctl("get", "/fwd/labels/n0", identity="node-n0").returncode == 0
    # ... and nothing else: no policy, no label (not even its own), no other node's status.
    for argv in (
        ("put", "/fwd/policies/evil", "{}"),
        ("put", "/fwd/labels/n0", '{"role":"trusted"}'),
        ("put", "/fwd/labels/n1", "{}"),
        ("put", "/fwd/status/n1", "{}"),
        ("del", "/fwd/status/n1"),
        ("get", "/fwd/labels/n1"),
        ("get", "--prefix", "/fwd/status/"),
        ("put", "/elsewhere", "x"),
        ("user", "grant-role", "n0", "fwd-admin"),
        ("auth", "disable"),
    ):
        assert denied(e.etcdctl(*argv, identity="node-n0")), argv
    # The admin writes policies and labels; root manages auth.
    assert e.etcdctl("put", "/fwd/policies/p", "{}", identity="fwd-admin").returncode == 0
    assert denied(e.etcdctl("user", "grant-role", "n0", "fwd-admin", identity="fwd-admin"))
    # No client certificate, or one from another CA: refused at the TLS handshake.
    no_cert = e.etcdctl("get", "/fwd/policies/p", identity=None)
    assert no_cert.returncode != 0 and "deadline exceeded" in no_cert.stderr
    other = make_etcd_certs(tmp_path / "other-ca", "--node", "n0")
    foreign = e.etcdctl("put", "/fwd/status/n0", "{}", identity="node-n0", pki=other)
    assert foreign.returncode != 0 and "deadline exceeded" in foreign.stderr
    assert "bad certificate" in e.log() or "unknown authority" in e.log()
    # Nodes hold their own role only: never the admin's.
    got = e.etcdctl("user", "get", "n0")
    assert got.returncode == 0 and "Roles: fwd-node-n0" in got.stdout and "fwd-admin" not in got.stdout


@pytest.mark.asyncio
async def test_init_is_idempotent_and_repairs_drift(secure_etcd: EtcdServer, pki: Path) -> None:
    e = secure_etcd
    assert e.etcdctl("user", "grant-role", "n1", "fwd-admin").returncode == 0
    assert e.etcdctl("role", "grant-permission", node_role("n1"), "readwrite", "--prefix", "/fwd/").returncode == 0
    async with EtcdClient(e.url, credentials=creds(pki, "root")) as root:
        done = await apply_plan(root, plan(LAYOUT, NODES))
        assert "user n1: revoked role fwd-admin" in done
        assert not any(line.startswith("user n0") for line in done)  # existed already
        assert await user_roles(root, "n1") == (node_role("n1"),)
    assert denied(e.etcdctl("put", "/fwd/policies/x", "{}", identity="node-n1"))
    # A node may see its own roles (etcd allows a user that), not another's.
    async with EtcdClient(e.url, credentials=creds(pki, "node-n0")) as node:
        assert await user_roles(node, "n0") == (node_role("n0"),)
        with pytest.raises(PermissionDenied, match="etcd user 'n0'"):
            await user_roles(node, "n1")


@pytest.mark.asyncio
async def test_three_nodes_converge_on_a_policy_the_admin_wrote(secure_etcd: EtcdServer, pki: Path) -> None:
    async with EtcdClient(secure_etcd.url, credentials=creds(pki, "fwd-admin")) as admin:
        # The admin labels n0 and n1; n2 has no labels yet.
        for node in ("n0", "n1"):
            await admin.put(LAYOUT.labels_key(node), encode_labels({"role": "edge"}))
        clients = [EtcdClient(secure_etcd.url, credentials=creds(pki, f"node-{n}")) for n in NODES]
        try:
            syncs = []
            async with _nodes(clients) as started:
                # --label asks to seed labels; a node may not write them: logged, not fatal.
                for node, client in zip(NODES, clients, strict=True):
                    syncs.append(await started(client, node, {"role": "trusted"}))
                rev = await put_policy(admin, "edge", "role=edge", 10, drop_rule("d1"))
                for s, want in zip(syncs, (True, True, False), strict=True):
                    if want:
                        await _synced(s, rev)
                    else:  # nothing selects it: it reports, and enforces nothing
                        await wait_until(lambda: syncs[2].statistics().status_puts > 0, what="n2 status")
                    assert [r.id for r in s.state.policy.rules] == (["edge:d1"] if want else [])
                    assert s.statistics().failures == 0 and s.state.etcd_error == ""
                assert (await admin.get(LAYOUT.labels_key("n2")))[0] is None  # the seed was refused
                statuses = await admin.get_prefix(LAYOUT.status)
                assert sorted(kv.key.rsplit("/", 1)[1] for kv in statuses.kvs) == list(NODES)
                for kv in statuses.kvs:
                    node = kv.key.rsplit("/", 1)[1]
                    assert decode_status(node, kv.value).synced_revision >= (rev if node != "n2" else 1)
                # Labels stayed what the admin wrote.
                labels, _ = await admin.get(LAYOUT.labels_key("n0"))
                assert labels is not None and labels.value == encode_labels({"role": "edge"})
                # The admin labels n2: the one node it concerns converges.
                rev = await admin.put(LAYOUT.labels_key("n2"), encode_labels({"role": "edge"}))
                await _synced(syncs[2], rev)
                assert [r.id for r in syncs[2].state.policy.rules] == ["edge:d1"]
        finally:
            for c in clients:
                await c.close()


@pytest.mark.asyncio
async def test_a_rotated_certificate_is_used_without_a_restart(tmp_path: Path, pki: Path, secure_etcd: EtcdServer) -> None:
    """n0 starts with a certificate that expires in 20 s; the renewed one is written to
    the same files; after the old one expired, etcd restarts (every connection is new):
    n0 converges again, so it presented the new certificate."""
    lifetime = 20
    make_etcd_certs(pki, "--node", "n0", "--seconds", str(lifetime))
    issued = time.monotonic()
    old = tmp_path / "old"
    old.mkdir()
    for suffix in ("pem", "key"):
        shutil.copy(pki / f"node-n0.{suffix}", old / f"node-n0.{suffix}")
    shutil.copy(pki / "ca.pem", old / "ca.pem")
    async with EtcdClient(secure_etcd.url, credentials=creds(pki, "fwd-admin")) as admin:
        await admin.put(LAYOUT.labels_key("n0"), encode_labels({"role": "edge"}))
        node_client = EtcdClient(secure_etcd.url, credentials=creds(pki, "node-n0", check_interval=0.2))
        try:
            async with _nodes([node_client]) as started:
                n0 = await started(node_client, "n0", {})
                rev = await put_policy(admin, "edge", "role=edge", 10, drop_rule("before"))
                await wait_until(lambda: n0.state.synced_revision >= rev, what="first policy")
                make_etcd_certs(pki, "--node", "n0")  # renewed: 30 days
                await wait_until(lambda: n0.statistics().credential_reloads >= 1, what="reload")
                await anyio.sleep(max(0.0, lifetime + 1 - (time.monotonic() - issued)))
                # The old certificate is now refused by etcd ...
                expired = await anyio.to_thread.run_sync(
                    lambda: secure_etcd.etcdctl("get", "/fwd/labels/n0", identity="node-n0", pki=old))
                assert expired.returncode != 0
                # ... and every connection starts over.
                await anyio.to_thread.run_sync(secure_etcd.restart)
                rev = await put_policy(admin, "edge", "role=edge", 10, drop_rule("after"))
                await wait_until(lambda: n0.state.synced_revision >= rev, timeout=20, what="after rotation")
                assert [r.id for r in n0.state.policy.rules] == ["edge:after"]
        finally:
            await node_client.close()


async def _synced(sync: ClusterSync, revision: int, timeout: float = 10.0) -> None:
    await wait_until(lambda: sync.state.synced_revision >= revision, timeout, what=f"{sync.config.node} synced")


Start = Callable[[EtcdClient, str, dict[str, str]], Awaitable[ClusterSync]]


@asynccontextmanager
async def _nodes(clients: list[EtcdClient]) -> AsyncIterator[Start]:
    """Like helpers.nodes_running, but each node with its own client (its own identity)."""
    async with anyio.create_task_group() as tg:

        async def start(client: EtcdClient, node: str, labels: dict[str, str]) -> ClusterSync:
            tx, rx = anyio.create_memory_object_stream[DatapathCommand](8)
            datapath = FakeDatapath(rx)
            sync = ClusterSync(client, tx, SyncConfig(node=node, labels=labels, backoff_max=1.0))
            await tg.start(datapath.run)
            await tg.start(sync.run)
            return sync

        yield start
        tg.cancel_scope.cancel()


def _fwd(*argv: str) -> tuple[int, str, str]:
    import io

    from fwd.cli import main as fwd_main

    out, err = io.StringIO(), io.StringIO()
    code = fwd_main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_straight_to_etcd_with_the_callers_certificate(tmp_path: Path, pki: Path) -> None:
    """fwd cluster init as root; then policy and label writes, status and wait with the
    admin's certificate, no agent anywhere; a node's certificate is refused."""
    import json

    server = EtcdServer(tmp_path / "etcd", pki=pki)
    try:
        server.start()

        def tls(who: str) -> list[str]:
            return ["--etcd", server.url, "--etcd-ca", str(pki / "ca.pem"),
                    "--etcd-cert", str(pki / f"{who}.pem"), "--etcd-key", str(pki / f"{who}.key")]  # fmt: skip

        code, out, err = _fwd("cluster", "init", *tls("root"), "--node", "n0", "--node", "n1", "--reader", "watcher")
        assert code == 0, err
        assert "auth enabled" in out and "user n0: fwd-node-n0" in out
        assert "role fwd-node-n0: read /fwd/policies/../fwd/policies0, read /fwd/labels/n0, readwrite /fwd/status/n0" in out
        code, out, err = _fwd("cluster", "init", *tls("root"), "--node", "root")
        assert code == 1 and "--node: 'root' is etcd's superuser" in err
        code, out, err = _fwd("cluster", "label", "n0", "role=edge", *tls("fwd-admin"))
        assert code == 0 and "n0: role=edge (revision" in out, err
        path = tmp_path / "edge.yaml"
        path.write_text("rules:\n  - {id: d1, action: drop, src: [198.18.0.0/24]}\n")
        code, out, err = _fwd("policy", "apply", str(path), "--name", "edge", "--selector", "role=edge", *tls("fwd-admin"))
        assert code == 0 and "wrote policy edge at etcd revision" in out, err
        code, out, err = _fwd("cluster", "policies", "-o", "json", *tls("fwd-admin"))
        assert code == 0 and [p["name"] for p in json.loads(out)["policies"]] == ["edge"]
        # No agent reports yet: n0 and n1 are known (by labels) and silent.
        code, out, err = _fwd("cluster", "status", "-o", "json", *tls("fwd-admin"))
        assert code == 0 and [(n["node"], n["live"]) for n in json.loads(out)["nodes"]] == [("n0", False)]
        # A node's certificate may not write a policy or a label, nor read the status.
        code, _, err = _fwd("policy", "apply", str(path), "--name", "evil", *tls("node-n0"))
        assert code == 1 and "PERMISSION_DENIED" in err and "etcd user 'n0'" in err
        code, _, err = _fwd("cluster", "label", "n0", "role=trusted", *tls("node-n0"))
        assert code == 1 and "PERMISSION_DENIED" in err
        code, _, err = _fwd("cluster", "status", *tls("node-n0"))
        assert code == 1 and "PERMISSION_DENIED" in err
        # Plain http is refused unless asked for; a certificate without its key too.
        code, _, err = _fwd("cluster", "status", "--etcd", f"http://127.0.0.1:{server.client_port}")
        assert code == 1 and "plain text" in err and "--etcd-insecure" in err
        code, _, err = _fwd("cluster", "status", "--etcd", server.url, "--etcd-cert", str(pki / "fwd-admin.pem"))
        assert code == 1 and "--etcd-key" in err
    finally:
        server.cleanup()
