"""Mutual TLS for the TCP listener, and roles from client certificates.

The TCP listener only runs with mutual TLS: the agent presents ``--tls-cert`` and
accepts only clients whose certificate chains to ``--tls-client-ca``. A client
certificate whose subject has organizational unit ``admin`` may change state;
any other valid certificate is read-only (contrib/make-certs.sh issues both).
The unix socket is guarded by file permissions instead and is always admin.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Mapping
from typing import Any

from fwd.errors import FwdError

ADMIN_OU = "admin"

# Methods that change state: refused for read-only clients. Every other method of
# the fwd.v1 services, health and reflection is a read.
WRITE_METHODS = frozenset(
    {
        "/fwd.v1.PolicyService/ApplyPolicy",
        "/fwd.v1.PolicyService/ConfirmPolicy",
        "/fwd.v1.PolicyService/RollbackPolicy",
        "/fwd.v1.RuleService/AddRule",
        "/fwd.v1.RuleService/DeleteRule",
        "/fwd.v1.SetService/AddElements",
        "/fwd.v1.SetService/RemoveElements",
        "/fwd.v1.ClusterService/Label",
        "/fwd.v1.ClusterService/DeletePolicy",
    }
)


class Role(enum.Enum):
    ADMIN = "admin"
    READ_ONLY = "read-only"


class TlsConfigError(FwdError):
    """The TLS settings are incomplete or the files cannot be used."""


def server_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    """An SSL context that requires and verifies a client certificate (HTTP/2 via ALPN)."""
    missing = [n for n, v in (("--tls-cert", cert), ("--tls-key", key),
                              ("--tls-client-ca", client_ca)) if not v]
    if missing:
        raise TlsConfigError(f"--listen needs mutual TLS: missing {', '.join(missing)}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"TLS files: {exc}") from exc
    ctx.set_alpn_protocols(["h2"])
    return ctx


def client_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """An SSL context for the CLI: verify the agent against ``ca``, present ``cert``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def role_of(peer_cert: Mapping[str, Any] | None) -> Role:
    """The role a verified client certificate grants (ssl.getpeercert() form)."""
    if not peer_cert:
        return Role.READ_ONLY
    for rdn in peer_cert.get("subject", ()):
        for name, value in rdn:
            if name == "organizationalUnitName" and value == ADMIN_OU:
                return Role.ADMIN
    return Role.READ_ONLY


def allowed(method: str, role: Role) -> bool:
    """Whether ``role`` may call ``method`` (a grpclib method name, /pkg.Service/Method)."""
    return role is Role.ADMIN or method not in WRITE_METHODS
