"""Translate the project's errors into gRPC status codes: the one place that does."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import structlog
from grpclib import GRPCError
from grpclib.const import Status

from fwd.errors import (
    AccessDenied,
    BpfError,
    CapacityError,
    ClusterUnavailable,
    LinkError,
    NotFound,
    PolicyError,
    PreconditionFailed,
    RevisionMismatch,
)
from fwd.policy.lockout import LockoutError

log = structlog.get_logger("fwd.api")


@contextlib.contextmanager
def grpc_errors(what: str) -> Iterator[None]:
    """Translate what an actor answered into a gRPC status (the only place that does)."""
    try:
        yield
    except GRPCError:
        raise
    except LockoutError as exc:
        raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None
    except PolicyError as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from None
    except (RevisionMismatch, PreconditionFailed) as exc:
        raise GRPCError(Status.FAILED_PRECONDITION, str(exc)) from None
    except CapacityError as exc:
        raise GRPCError(Status.RESOURCE_EXHAUSTED, str(exc)) from None
    except NotFound as exc:
        raise GRPCError(Status.NOT_FOUND, str(exc)) from None
    except ClusterUnavailable as exc:
        raise GRPCError(Status.UNAVAILABLE, str(exc)) from None
    except AccessDenied as exc:
        raise GRPCError(Status.PERMISSION_DENIED, str(exc)) from None
    except (BpfError, LinkError) as exc:
        raise GRPCError(Status.INTERNAL, f"{what}: {exc}") from None
    except Exception as exc:
        # A bug, not a user error: keep the details in the log, give the caller a hint.
        log.exception("api_handler_failed", what=what)
        raise GRPCError(
            Status.INTERNAL, f"{what}: internal error ({type(exc).__name__}); see the agent log"
        ) from None
