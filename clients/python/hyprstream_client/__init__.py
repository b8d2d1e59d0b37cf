"""Python client of Hyprstream's gRPC API (proto/hyprstream/v1): Client (grpcio) and AsyncClient (grpc.aio), typed
results (types), exceptions carrying the server's status and error kind (errors), retries of calls refused as busy
(Retry). README "Python client" has an example."""
from .aio import AsyncClient, AsyncEventSession, AsyncGenerateStream
from .client import Client, EventSession, GenerateStream
from .errors import (AlreadyExists, Busy, Cancelled, ContextOverflow, DataLoss, DeadlineExceeded, HyprstreamError,
                     Internal, InvalidArgument, NotFound, OutOfRange, ResourceExhausted, Unavailable, Unimplemented)
from ._retry import Retry
from .types import (Ack, Adapter, AdapterUsed, AdapterVersion, Applied, Durable, EventResult, Failed,
                    GenerateResult, GradientUpdate, ModuleGradient, Quarantined, Subscribed, Token, TopLogprob,
                    TrainerStats, TrainResult, UpdateSummary, Usage, VersionPublished)

__all__ = [
    "Client", "AsyncClient", "GenerateStream", "AsyncGenerateStream", "EventSession", "AsyncEventSession", "Retry",
    "HyprstreamError", "InvalidArgument", "NotFound", "AlreadyExists", "OutOfRange", "ContextOverflow",
    "ResourceExhausted", "Busy", "Unavailable", "Unimplemented", "DataLoss", "Internal", "Cancelled",
    "DeadlineExceeded",
    "Token", "TopLogprob", "Usage", "AdapterUsed", "GenerateResult", "EventResult", "TrainResult", "ModuleGradient",
    "GradientUpdate", "UpdateSummary", "Subscribed", "Ack", "Durable", "Applied", "Quarantined", "Failed",
    "Adapter", "AdapterVersion", "TrainerStats", "VersionPublished",
]
