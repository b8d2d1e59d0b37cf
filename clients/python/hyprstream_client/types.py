"""The client's results and inputs as dataclasses: plain Python values, whatever the wire format (proto messages
stay inside the client). Field meanings follow proto/hyprstream/v1."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

# --- generation ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopLogprob:
    id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class Token:
    """One generated token. `text` holds whole UTF-8 characters: empty while a character or a stop string is
    pending (the text then comes with a later token, or in the stream's `tail`)."""
    id: int
    text: str
    logprob: float
    top_logprobs: List[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int      # prompt tokens whose KV came from the prefix cache
    recalled_tokens: int    # tokens of a taught conversation served before the prompt (scoped adapters)


@dataclass(frozen=True)
class AdapterUsed:
    """The adapter a request ran with: `name` "" is the base model. `scope`: "inside" (the adapter answered),
    "outside" (the prompt was unrelated to what the adapter was taught: the base model answered) or ""."""
    name: str
    version: int
    scope: str
    scope_similarity: float


@dataclass(frozen=True)
class GenerateResult:
    text: str
    tokens: List[Token]
    finish_reason: str      # "stop", "length" or "cancelled"
    usage: Usage
    adapter: AdapterUsed


# --- learning --------------------------------------------------------------------------------------------------------

EventStatus = str  # "accepted", "duplicate" (the id was accepted before: applied once), "rejected", "busy"


@dataclass(frozen=True)
class EventResult:
    """What became of one example or event."""
    id: str
    status: EventStatus
    error: str = ""


@dataclass(frozen=True)
class TrainResult:
    """`version`: the adapter version that holds the accepted events (0 when the call did not wait for it);
    `quarantined`: id -> why its batch was set aside instead of applied."""
    domain: str
    results: List[EventResult]
    version: int
    quarantined: Dict[str, str]


@dataclass
class ModuleGradient:
    """d loss / d value for coordinates (rows[i], cols[i]) of one LoRA matrix ("A" or "B") inside the adapter's
    sparsity pattern; repeated coordinates are summed."""
    layer: int
    module: str             # q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj
    matrix: str
    rows: Sequence[int]
    cols: Sequence[int]
    values: Sequence[float]


@dataclass
class GradientUpdate:
    """A remote worker's gradient, computed on adapter version `base_version`; applied exactly once by `id`."""
    id: str
    base_version: int
    modules: List[ModuleGradient]


@dataclass(frozen=True)
class UpdateSummary:
    accepted: int
    duplicates: int
    durable_seq: int        # the last write-ahead log record holding an accepted update
    version: int            # the domain's current version when the summary was made


# Replies of an event session (stream_events).

@dataclass(frozen=True)
class Subscribed:
    domain: str             # "*": every domain


@dataclass(frozen=True)
class Ack:
    id: str
    domain: str
    status: EventStatus
    error: str = ""


@dataclass(frozen=True)
class Durable:
    domain: str
    seq: int
    ids: List[str]


@dataclass(frozen=True)
class Applied:
    domain: str
    seq: int
    version: int
    ids: List[str]
    loss: Optional[float]   # None for a batch of gradients only
    examples: int
    gradients: int
    tokens: int
    update_ms: float
    drift: Optional[float]  # canary drift of the version, with a guard


@dataclass(frozen=True)
class Quarantined:
    domain: str
    seq: int
    ids: List[str]
    reason: str
    refused: bool           # the publication guard refused the version it would have made


@dataclass(frozen=True)
class Failed:
    domain: str
    error: str              # the trainer stopped


EventReply = Union[Subscribed, Ack, Durable, Applied, Quarantined, Failed]


# --- adapters --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterVersion:
    version: int
    parent: int
    created: str            # UTC, ISO 8601
    events: int
    bytes: int
    scope_examples: int


@dataclass(frozen=True)
class TrainerStats:
    accepted: int
    duplicates: int
    rejected: int
    queue_depth: int
    events_applied: int
    batches: int
    last_loss: float
    update_ms_p50: float
    update_ms_p99: float
    quarantined_batches: int
    failure: str


@dataclass(frozen=True)
class Adapter:
    name: str
    version: int            # current
    rank: int
    alpha: float
    sparsity: float
    targets: List[str]
    active_values: int
    density: float
    bytes: int
    base_model: str
    versions: List[AdapterVersion]
    trainer: Optional[TrainerStats]  # when this server runs the domain's trainer
    error: str              # list() only: an adapter folder that could not be read, and why


@dataclass(frozen=True)
class VersionPublished:
    domain: str
    version: int
    seq: int
    ids: List[str]
    loss: float
