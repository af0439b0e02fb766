"""The TLS identity fwd presents to etcd, re-read when its files change.

etcd runs with ``--client-cert-auth``: the client certificate's CN is the etcd
user, so a node's certificate (CN = node name) *is* its identity and its role
(docs/cluster.md, "Who may do what"). Certificates are short-lived in a sane
PKI; an agent must take a renewed one without a restart. gRPC's channel
credentials are immutable, so ``TlsCredentials`` watches the three files (a
``stat`` at most every ``check_interval`` seconds), loads and validates a changed
set (the key must match the certificate; a half-written set is refused and the
old one kept until the next check), and bumps ``version``; ``EtcdClient``
builds its next channel from the new version and ``ClusterSync`` restarts its
session on it (fwd/cluster/etcd.py).

No grpc import here: the module is pure file handling plus the stdlib ``ssl``
module, which validates the set exactly as a TLS handshake would load it.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

from fwd.errors import FwdError


class CredentialsError(FwdError):
    """The TLS files for etcd are missing, unreadable or do not belong together."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths as given on the command line (``--etcd-ca``, ``--etcd-cert``, ``--etcd-key``)."""

    ca: str = ""  # "" = the system's trusted roots
    cert: str = ""
    key: str = ""

    def check(self) -> None:
        """Refuse a certificate without its key and the reverse, naming the option."""
        if bool(self.cert) != bool(self.key):
            missing = "--etcd-key" if self.cert else "--etcd-cert"
            raise CredentialsError(f"{missing}: needed with {'--etcd-cert' if self.cert else '--etcd-key'}")

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.ca, self.cert, self.key) if p)


@dataclass(frozen=True)
class Identity:
    """What one loaded certificate says (for logs and the startup checks)."""

    common_name: str = ""
    not_after: str = ""
    fingerprint: str = ""  # sha256 of the PEM file, first 16 hex digits


@dataclass(frozen=True)
class Loaded:
    ca: bytes | None
    cert: bytes | None
    key: bytes | None
    identity: Identity


def _stat_signature(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """(inode, size, mtime) per file: a rename over the file or a rewrite both change it."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((-1, -1, -1))
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _identity(cert_path: str, pem: bytes) -> Identity:
    fingerprint = hashlib.sha256(pem).hexdigest()[:16]
    try:
        # The stdlib's only certificate decoder (used by its own tests); only for logs.
        decoded: dict[str, Any] = ssl._ssl._test_decode_cert(cert_path)  # type: ignore[attr-defined]
    except (AttributeError, ssl.SSLError, OSError):
        return Identity(fingerprint=fingerprint)
    cn = ""
    for rdn in decoded.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                cn = str(value)
    return Identity(cn, str(decoded.get("notAfter", "")), fingerprint)


def load(files: TlsFiles) -> Loaded:
    """Read and validate the set: the CA parses, the key matches the certificate."""
    files.check()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if files.ca:
            ctx.load_verify_locations(files.ca)
        if files.cert:
            ctx.load_cert_chain(files.cert, files.key)
    except FileNotFoundError as e:
        raise CredentialsError(f"etcd TLS: {e.filename}: no such file") from None
    except (OSError, ssl.SSLError) as e:
        which = f"--etcd-ca {files.ca}" if files.ca else ""
        if files.cert:
            which = f"--etcd-ca {files.ca}, --etcd-cert {files.cert}, --etcd-key {files.key}"
        raise CredentialsError(f"etcd TLS ({which}): {e}") from None

    def read(path: str) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    try:
        ca, cert, key = read(files.ca), read(files.cert), read(files.key)
    except OSError as e:
        raise CredentialsError(f"etcd TLS: {e}") from None
    identity = _identity(files.cert, cert) if cert is not None else Identity()
    return Loaded(ca, cert, key, identity)


class TlsCredentials:
    """One identity's files, loaded now and re-loaded when they change.

    ``version`` goes up each time a changed, valid set is loaded; a channel
    built from an older version is stale. Shared by every EtcdClient of one
    identity (the agent's sync and admin clients).
    """

    def __init__(self, files: TlsFiles, *, check_interval: float = 5.0) -> None:
        self.files = files
        self.check_interval = check_interval
        self._signature = _stat_signature(files.paths)
        self._loaded = load(files)
        self._checked = time.monotonic()
        self.version = 1
        self.last_error = ""  # why the newest change on disk was not taken

    @property
    def identity(self) -> Identity:
        return self._loaded.identity

    def grpc_credentials(self) -> Any:
        """grpc.ChannelCredentials of the current version (imports grpc: cluster mode only)."""
        import grpc

        loaded = self._loaded
        return grpc.ssl_channel_credentials(
            root_certificates=loaded.ca, private_key=loaded.key, certificate_chain=loaded.cert
        )

    def refresh(self, *, force: bool = False) -> bool:
        """Look at the files (at most every ``check_interval`` unless ``force``); True
        if a new valid set was loaded. A set that fails to load keeps the old one and
        is tried again at the next check (an operator may be half-way through a copy)."""
        now = time.monotonic()
        if not force and now - self._checked < self.check_interval:
            return False
        self._checked = now
        signature = _stat_signature(self.files.paths)
        if signature == self._signature:
            return False
        try:
            loaded = load(self.files)
        except CredentialsError as e:
            self.last_error = str(e)
            return False
        self._signature = signature
        self.last_error = ""
        if (loaded.ca, loaded.cert, loaded.key) == (self._loaded.ca, self._loaded.cert, self._loaded.key):
            return False  # touched, same bytes
        self._loaded = loaded
        self.version += 1
        return True
