"""The project's small error hierarchy (STYLE.md practice 9).

Only the ctypes and netlink wrappers translate OSError into these; the API
layer maps them onto gRPC status codes.
"""

from __future__ import annotations


class FwdError(Exception):
    """Base of every error fwd raises on purpose."""


class BpfError(FwdError):
    """A libbpf or bpf(2) call failed; ``errno`` holds the kernel's reason."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class PolicyError(FwdError):
    """A policy is invalid. ``field`` names the offending field, e.g. ``rules[2].src[0]``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class RevisionMismatch(FwdError):
    """An apply named an expected revision that is not the current one."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"expect_revision: expected revision {expected} but revision {current} is applied"
        )
        self.expected = expected
        self.current = current


class PreconditionFailed(FwdError):
    """A valid request the current state does not allow (e.g. confirming nothing)."""


class CapacityError(FwdError):
    """A compiled policy does not fit the data plane's maps (tuples, entries, slots)."""


class LinkError(FwdError):
    """Attaching to or detaching from an interface failed."""


class NotFound(FwdError):
    """A named object does not exist (NOT_FOUND at the API)."""


class AccessDenied(FwdError):
    """The identity a request runs as may not do it (PERMISSION_DENIED at the API)."""


class ClusterUnavailable(FwdError):
    """etcd could not be reached or did not answer in time (UNAVAILABLE at the API)."""
