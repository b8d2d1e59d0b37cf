"""Between the client's Python values and the proto messages, both ways; shared by Client and AsyncClient."""
from __future__ import annotations

import json
from typing import Any, List, Mapping, Optional, Sequence, Union

from ._proto import adapters_pb2 as apb
from ._proto import common_pb2 as cpb
from ._proto import inference_pb2 as ipb
from ._proto import learning_pb2 as lpb
from .types import (Ack, Adapter, AdapterUsed, AdapterVersion, Applied, Durable, EventReply, EventResult, Failed,
                    GenerateResult, GradientUpdate, Quarantined, Subscribed, Token, TopLogprob, TrainerStats,
                    TrainResult, Usage, VersionPublished)

Messages = Sequence[Mapping[str, str]]
_SAMPLING_FIELDS = frozenset(ipb.Sampling.DESCRIPTOR.fields_by_name)
STATUS = {lpb.EVENT_STATUS_ACCEPTED: "accepted", lpb.EVENT_STATUS_DUPLICATE: "duplicate",
          lpb.EVENT_STATUS_REJECTED: "rejected", lpb.EVENT_STATUS_BUSY: "busy"}

# --- requests --------------------------------------------------------------------------------------------------------


def chat_messages(messages: Messages) -> List[cpb.ChatMessage]:
    return [cpb.ChatMessage(role=m["role"], content=m["content"]) for m in messages]


def generate_request(prompt: Union[str, Sequence[int], None] = None, messages: Optional[Messages] = None, *,
                     enable_thinking: Optional[bool] = None, adapter: Optional[str] = None,
                     adapter_scale: Optional[float] = None, adapter_version: Optional[int] = None,
                     request_id: Optional[str] = None, **sampling: Any) -> ipb.GenerateRequest:
    """A GenerateRequest from a prompt (text, or token ids) or chat messages. Sampling parameters left out or None
    take the model's generation defaults."""
    if (prompt is None) == (messages is None):
        raise TypeError("give exactly one of 'prompt' (text or token ids) and 'messages'")
    unknown = set(sampling) - _SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling parameter(s) {sorted(unknown)}; known: {sorted(_SAMPLING_FIELDS)}")
    request = ipb.GenerateRequest(sampling=ipb.Sampling(**{k: v for k, v in sampling.items() if v is not None}),
                                  adapter=adapter or "", adapter_version=adapter_version or 0,
                                  request_id=request_id or "")
    if adapter_scale is not None:
        request.adapter_scale = adapter_scale
    if messages is not None:
        request.chat.messages.extend(chat_messages(messages))
        if enable_thinking is not None:
            request.chat.enable_thinking = enable_thinking
    elif isinstance(prompt, str):
        request.text = prompt
    else:
        request.token_ids.ids.extend(prompt)
    return request


def example(e: Mapping[str, Any]) -> lpb.Example:
    """{"id"?, "prompt", "completion"}, {"id"?, "messages"} or {"id"?, "text"}: the form is checked by the server."""
    e = dict(e)
    if "messages" in e:
        e["messages"] = chat_messages(e["messages"])
    return lpb.Example(**e)


def gradient_update(u: GradientUpdate, domain: str, client_id: str = "") -> lpb.GradientUpdate:
    return lpb.GradientUpdate(
        id=u.id, domain=domain, base_version=u.base_version, client_id=client_id,
        modules=[lpb.ModuleGradient(layer=m.layer, module=m.module, matrix=m.matrix, rows=m.rows, cols=m.cols,
                                    values=m.values) for m in u.modules])


def event_request(domain: str, event: Union[Mapping[str, Any], GradientUpdate]) -> lpb.StreamEventsRequest:
    """A learning event of a domain: a dict exactly as `hyprstream train` reads a line (examples, gradient
    submissions), or a GradientUpdate."""
    if isinstance(event, GradientUpdate):
        return lpb.StreamEventsRequest(event=lpb.Event(domain=domain, gradient=gradient_update(event, domain)))
    return lpb.StreamEventsRequest(event=lpb.Event(domain=domain, json=json.dumps(event)))


def subscribe_request(domain: str) -> lpb.StreamEventsRequest:
    return lpb.StreamEventsRequest(subscribe=lpb.Subscribe(domain=domain))


def train_request(domain: str, examples: Sequence[Mapping[str, Any]], wait: bool) -> lpb.TrainRequest:
    return lpb.TrainRequest(domain=domain, examples=[example(e) for e in examples],
                            wait=lpb.WAIT_APPLIED if wait else lpb.WAIT_DURABLE)


def create_request(name: str, **settings: Any) -> apb.CreateAdapterRequest:
    return apb.CreateAdapterRequest(name=name, **{k: v for k, v in settings.items() if v is not None})


# --- results ---------------------------------------------------------------------------------------------------------


def token(t: ipb.Token) -> Token:
    return Token(t.id, t.text, t.logprob, [TopLogprob(x.id, x.text, x.logprob) for x in t.top_logprobs])


def usage(u: ipb.Usage) -> Usage:
    return Usage(u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.recalled_tokens)


def adapter_used(a: ipb.AdapterUsed) -> AdapterUsed:
    return AdapterUsed(a.name, a.version, a.scope, a.scope_similarity)


def generate_result(r: Union[ipb.GenerateResponse, ipb.Finish], tokens: List[Token]) -> GenerateResult:
    """From a GenerateResponse (its own tokens) or a stream's Finish (the tokens streamed before it)."""
    return GenerateResult(r.text, tokens, r.finish_reason, usage(r.usage), adapter_used(r.adapter))


def train_result(r: lpb.TrainResponse) -> TrainResult:
    return TrainResult(r.domain, [EventResult(x.id, STATUS.get(x.status, "unspecified"), x.error) for x in r.results],
                       r.version, dict(r.quarantined))


def event_reply(r: lpb.StreamEventsResponse) -> EventReply:
    kind = r.WhichOneof("kind")
    if kind == "subscribed":
        return Subscribed(r.subscribed)
    if kind == "ack":
        return Ack(r.ack.id, r.ack.domain, STATUS.get(r.ack.status, "unspecified"), r.ack.error)
    if kind == "durable":
        return Durable(r.durable.domain, r.durable.seq, list(r.durable.ids))
    if kind == "applied":
        a = r.applied
        return Applied(a.domain, a.seq, a.version, list(a.ids), a.loss if a.HasField("loss") else None, a.examples,
                       a.gradients, a.tokens, a.update_ms, a.drift if a.HasField("drift") else None)
    if kind == "quarantined":
        q = r.quarantined
        return Quarantined(q.domain, q.seq, list(q.ids), q.reason, q.refused)
    return Failed(r.failed.domain, r.failed.error)


def adapter(a: apb.Adapter) -> Adapter:
    versions = [AdapterVersion(v.version, v.parent, v.created, v.events, v.bytes, v.scope_examples)
                for v in a.versions]
    t = a.trainer
    trainer = TrainerStats(t.accepted, t.duplicates, t.rejected, t.queue_depth, t.events_applied, t.batches,
                           t.last_loss, t.update_ms_p50, t.update_ms_p99, t.quarantined_batches,
                           t.failure) if a.HasField("trainer") else None
    return Adapter(a.name, a.version, a.rank, a.alpha, a.sparsity, list(a.targets), a.active_values, a.density,
                   a.bytes, a.base_model, versions, trainer, a.error)


def version_published(v: apb.VersionPublished) -> VersionPublished:
    return VersionPublished(v.domain, v.version, v.seq, list(v.ids), v.loss)


def all_have_ids(items: Sequence[Union[Mapping[str, Any], GradientUpdate]]) -> bool:
    """Whether each item names its id, so that sending it again is applied once (a retry is safe)."""
    return all(i.id if isinstance(i, GradientUpdate) else i.get("id") for i in items)

