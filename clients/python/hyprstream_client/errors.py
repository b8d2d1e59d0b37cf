"""Exceptions carrying the server's status: one class per gRPC status code the server uses, with `.code` (the
grpc.StatusCode) and `.kind` (the server's error kind from the "hs-error-kind" trailer: "invalid_argument",
"not_found", "context_overflow", "busy", ...; None when the status did not come from the server's own checks,
e.g. a connection failure)."""
from __future__ import annotations

from typing import Optional

import grpc

KIND_TRAILER = "hs-error-kind"


class HyprstreamError(Exception):
    """A failed call. `code`: grpc.StatusCode; `kind`: the server's error kind or None; `details`: its message."""

    def __init__(self, code: grpc.StatusCode, details: str, kind: Optional[str] = None):
        super().__init__(f"{code.name}: {details}" + (f" ({kind})" if kind else ""))
        self.code, self.details, self.kind = code, details, kind


class InvalidArgument(HyprstreamError):
    """A malformed request (INVALID_ARGUMENT)."""


class NotFound(HyprstreamError):
    """An unknown adapter, domain or version (NOT_FOUND)."""


class AlreadyExists(HyprstreamError):
    """ALREADY_EXISTS."""


class OutOfRange(HyprstreamError):
    """OUT_OF_RANGE."""


class ContextOverflow(OutOfRange):
    """The prompt plus max_tokens do not fit the model's context (kind "context_overflow")."""


class ResourceExhausted(HyprstreamError):
    """RESOURCE_EXHAUSTED: a full queue or thread pool, or a message over the size limit."""


class Busy(ResourceExhausted):
    """A full queue (kind "busy"): the same request may succeed later. The client retries these (README)."""


class Unavailable(HyprstreamError):
    """No connection, or the server is draining (UNAVAILABLE)."""


class Unimplemented(HyprstreamError):
    """Something the model or server does not support (UNIMPLEMENTED)."""


class DataLoss(HyprstreamError):
    """A damaged file on the server (DATA_LOSS)."""


class Internal(HyprstreamError):
    """A failure inside the server (INTERNAL), an i/o error included."""


class Cancelled(HyprstreamError):
    """CANCELLED."""


class DeadlineExceeded(HyprstreamError):
    """The call's timeout passed (DEADLINE_EXCEEDED)."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}
# A kind refines its code's class; Busy while the server drains comes as UNAVAILABLE ("go elsewhere"), not Busy.
_BY_KIND = {(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"): Busy,
            (grpc.StatusCode.OUT_OF_RANGE, "context_overflow"): ContextOverflow}


def from_rpc_error(error: grpc.RpcError) -> HyprstreamError:
    """The exception for a failed call (grpc.RpcError of grpcio and grpc.aio alike)."""
    code, details = error.code(), error.details() or ""
    kind = dict(error.trailing_metadata() or ()).get(KIND_TRAILER)
    cls = _BY_KIND.get((code, kind)) or _BY_CODE.get(code, HyprstreamError)
    return cls(code, details, kind)
