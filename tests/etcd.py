"""A real etcd for the cluster tests: started on loopback (or inside a namespace),
with a temporary data dir and free ports, killed by PID.

``EtcdServer.stop()`` / ``start()`` / ``restart()`` keep the data dir, so a test
can take etcd away and bring the same cluster (same revisions, same keys) back.
With ``netns=NAME`` the server runs under ``nsenter --net=/run/netns/NAME`` and
listens on ``host`` there, so agents in other namespaces can reach it over a
veth; health checks then run in that namespace too.

With ``pki=DIR`` (made by contrib/make-etcd-certs.sh) the server speaks TLS only
and requires a client certificate signed by DIR/ca.pem (``--client-cert-auth``:
the certificate's CN is the etcd user once auth is enabled); ``etcdctl(...,
identity=NAME)`` runs etcdctl as DIR/NAME.pem.

The ``etcd_server`` fixture yields a started server (skipped when
/usr/bin/etcd is missing) and always kills it.
"""

from __future__ import annotations

import os
import shutil
import ssl
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's choice for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class EtcdServer:
    """One single-member etcd cluster owned by a test (or a benchmark)."""

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        netns: str | None = None,
        name: str = "fwdtest",
        extra_args: tuple[str, ...] = (),
        pki: Path | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="fwd-etcd-")) if data_dir is None else data_dir
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "etcd.log"
        self.host = host
        self.netns = netns
        self.name = name
        self.extra_args = extra_args
        self.pki = pki
        # Ports picked on the host: a fresh namespace has every port free anyway.
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.pki is not None else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    def tls_args(self, identity: str | None = "fwd-admin") -> list[str]:
        """etcdctl's / curl's TLS options for ``identity`` (DIR/<identity>.pem; None:
        no client certificate)."""
        if self.pki is None:
            return []
        args = ["--cacert", str(self.pki / "ca.pem")]
        if identity is not None:
            args += ["--cert", str(self.pki / f"{identity}.pem"), "--key", str(self.pki / f"{identity}.key")]
        return args

    def etcdctl(self, *argv: str, identity: str | None = "root", timeout: float = 15.0,
                pki: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run etcdctl against this server as ``identity`` (in its namespace, if any);
        ``pki`` overrides where the client's certificates come from (another CA)."""
        tls: list[str] = []
        if self.pki is not None:
            base = pki or self.pki
            tls = ["--cacert", str(self.pki / "ca.pem")]
            if identity is not None:
                tls += ["--cert", str(base / f"{identity}.pem"), "--key", str(base / f"{identity}.key")]
        cmd = ["etcdctl", "--endpoints", self.url, "--dial-timeout", "2s", "--command-timeout", "5s", *tls, *argv]
        if self.netns is not None:
            cmd = ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "ETCDCTL_API": "3"})  # fmt: skip

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("etcd is not running")
        return self.proc.pid

    def argv(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-token", f"fwd-{os.getpid()}-{self.client_port}",
            "--logger", "zap",
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip
        if self.pki is not None:
            argv += [
                "--cert-file", str(self.pki / "server.pem"), "--key-file", str(self.pki / "server.key"),
                "--trusted-ca-file", str(self.pki / "ca.pem"), "--client-cert-auth",
            ]  # fmt: skip
        if self.netns is not None:
            # nsenter keeps the mount namespace (ip netns exec would remount /sys).
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        return argv

    def start(self, timeout: float = 20.0) -> None:
        """Start etcd (same data dir as before, if any) and wait until it is healthy."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("etcd already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # nsenter execs etcd: the Popen pid is etcd's own.
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, start_new_session=True)
        self.wait_healthy(timeout)

    def healthy(self) -> bool:
        """One health probe (GET /health; in the namespace when there is one)."""
        if self.netns is None:
            context = None
            if self.pki is not None:
                context = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
                context.load_cert_chain(str(self.pki / "fwd-admin.pem"), str(self.pki / "fwd-admin.key"))
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1.0, context=context) as resp:
                    return b'"true"' in resp.read()
            except OSError:
                return False
        probe = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", "curl", "-sf", "-m", "1", *self.tls_args(),
             f"{self.url}/health"],
            capture_output=True,
            timeout=5,
            check=False,
        )
        return probe.returncode == 0 and b'"true"' in probe.stdout

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited:\n{self.log()}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd not healthy after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop etcd by PID (SIGKILL if it does not exit in time); the data dir stays."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    def cpu_seconds(self) -> float:
        """User + system CPU time etcd has used (from /proc/<pid>/stat)."""
        with open(f"/proc/{self.pid}/stat") as f:
            # Fields after the ")" of the command name; utime and stime are 14 and 15.
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def cleanup(self) -> None:
        """Kill etcd and remove the data dir if this object made it."""
        self.kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def need_etcd() -> None:
    if not os.path.exists(ETCD):
        pytest.skip("etcd is not installed (Debian: etcd-server)")


ROOT = Path(__file__).resolve().parents[1]


def make_etcd_certs(directory: Path, *argv: str) -> Path:
    """contrib/make-etcd-certs.sh DIRECTORY ARGV...: a CA, etcd's certificate, root,
    fwd-admin and ``--node`` certificates (run again to add or rotate)."""
    subprocess.run(["bash", str(ROOT / "contrib/make-etcd-certs.sh"), str(directory), *argv],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return directory


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A started etcd on loopback with its data under ``tmp_path``; killed afterwards."""
    need_etcd()
    server = EtcdServer(tmp_path / "etcd")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


class GrpcProxy:
    """One ``etcd grpc-proxy start`` in front of ``upstream`` (plain TCP on loopback),
    as the fan-out tier of bench/cluster: identical watches from its clients become one
    watch on etcd. Killed by PID; ``metrics()`` reads its Prometheus endpoint."""

    def __init__(self, upstream: EtcdServer, base_dir: Path, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.base_dir = base_dir
        self.host = host
        self.port = free_port(host)
        self.metrics_port = free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("grpc-proxy is not running")
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            ETCD, "grpc-proxy", "start",
            "--endpoints", f"{self.upstream.host}:{self.upstream.client_port}",
            "--listen-addr", f"{self.host}:{self.port}",
            "--advertise-client-url", f"{self.host}:{self.port}",
            "--metrics-addr", f"http://{self.host}:{self.metrics_port}",
            "--data-dir", str(self.base_dir / "data"),
        ]  # fmt: skip
        with open(self.base_dir / "proxy.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"grpc-proxy exited: {(self.base_dir / 'proxy.log').read_text()[-2000:]}")
            try:
                self.metrics()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("grpc-proxy did not come up")

    def metrics(self) -> dict[str, float]:
        return read_metrics(f"http://{self.host}:{self.metrics_port}/metrics")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)


def read_metrics(url: str, context: ssl.SSLContext | None = None) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text endpoint (name -> value)."""
    with urllib.request.urlopen(url, timeout=5.0, context=context) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out
