"""The agent's settings, fixed at start and passed to the actors that need them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    """Agent settings fixed at start (passed to actors, never mutated)."""

    socket_path: str = "/run/fwd/fwd.sock"
    state_dir: str = "/var/lib/fwd"
    bpffs_dir: str = "/sys/fs/bpf/fwd"
    # Pin maps, program and links under bpffs_dir (mounting a bpffs at /sys/fs/bpf
    # if needed). False only on the operator's explicit --no-pin.
    pin: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    reply_timeout: float = 10.0
    # On a clean exit, keep XDP attached (pinned links keep enforcing the last
    # policy, and the next agent adopts them) or detach everything.
    detach_on_exit: bool = False
    # TCP listener "HOST:PORT" (empty: unix socket only); runs only with mutual TLS.
    listen: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Anti-lockout: traffic from these prefixes to these services ("tcp/22") may
    # not be dropped by any policy unless the apply says force.
    mgmt_prefixes: tuple[str, ...] = ()
    mgmt_services: tuple[str, ...] = ("tcp/22",)
    # The failsafe (fwd/policy/failsafe.py): --failsafe values, each a comma-separated
    # list of entries ("tcp/22"); all empty turns it off.
    failsafe: tuple[str, ...] = ("tcp/22",)
    # Largest request message the API reads (a 100,000-rule policy is ~6 MB).
    max_request_bytes: int = 64 * 1024 * 1024
    # fwd agent --dry-run: every policy is enforced in dry-run (nothing is dropped).
    force_dry_run: bool = False
    # Serve Prometheus metrics on HOST:PORT; "" disables the endpoint.
    metrics_addr: str = "127.0.0.1:9469"
    # The kernel's event budget, per CPU: records per second and bucket depth
    # (what it suppresses is counted). Defaults: bpf/fwd.h FWD_EVENT_RATE / _BURST.
    event_rate: int = 100_000
    event_burst: int = 10_000
    # Cluster mode (issue 6): policies come from etcd at these endpoints
    # ("http://HOST:PORT"); empty means local mode (SQLite, the default).
    etcd_endpoints: tuple[str, ...] = ()
    node_name: str = ""  # this node's name in etcd (default: the host name)
    node_labels: tuple[tuple[str, str], ...] = ()  # written once, if the node has none
    etcd_prefix: str = "/fwd/"
    lease_ttl: int = 10  # seconds: the status record vanishes this long after a crash
    # TLS to etcd (issue 15): the CA, and this node's certificate (CN = node name),
    # re-read when the files change; http:// URLs only with etcd_insecure. The admin
    # identity, when given, serves the API's cluster writes and status reads.
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    etcd_insecure: bool = False
    etcd_admin_cert: str = ""
    etcd_admin_key: str = ""
    etcd_cert_check: float = 5.0  # seconds between looks at the certificate files

    @property
    def cluster(self) -> bool:
        """Whether the agent runs in cluster mode (policies from etcd)."""
        return bool(self.etcd_endpoints)
