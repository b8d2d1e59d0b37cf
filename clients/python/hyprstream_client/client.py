"""The synchronous client (grpcio). AsyncClient (aio.py) has the same methods for asyncio."""
from __future__ import annotations

import queue
import time
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Optional, Sequence, TypeVar

import grpc

from . import _convert as conv
from ._proto import adapters_pb2 as apb
from ._proto import adapters_pb2_grpc as agrpc
from ._proto import inference_pb2_grpc as igrpc
from ._proto import learning_pb2_grpc as lgrpc
from ._retry import NO_RETRY, Replayable, Retry, retriable
from ._submission import Event, Submission
from .errors import Cancelled, from_rpc_error
from .types import (Adapter, EventReply, GenerateResult, GradientUpdate, Token, TrainResult, UpdateSummary,
                    VersionPublished)

T = TypeVar("T")
_END = object()  # closes a request queue


def call_metadata(api_key: Optional[str]):
    # The server checks no key itself; a gateway in front of it may (README "Python client").
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def open_channel(target: str, credentials: Optional[grpc.ChannelCredentials], aio: bool):
    module = grpc.aio if aio else grpc
    return module.secure_channel(target, credentials) if credentials else module.insecure_channel(target)


def with_retry(call: Callable[[], T], retry: Retry) -> T:
    """call(), again after a backoff while the server refuses it as busy; errors as HyprstreamError."""
    for delay in retry.delays():
        try:
            return call()
        except grpc.RpcError as e:
            error = from_rpc_error(e)
            if delay is None or not retriable(error):
                raise error from e
        time.sleep(delay)


class ReplyStream(Iterator[T]):
    """The replies of a server-streaming call as the client's types, errors as HyprstreamError. cancel() (or
    leaving a `with` block) ends the call: the iteration then stops."""

    def __init__(self, call, convert: Callable[[Any], T]):
        self._call, self._convert, self._cancelled = call, convert, False

    def __next__(self) -> T:
        try:
            return self._convert(next(self._call))
        except grpc.RpcError as e:
            error = from_rpc_error(e)
            if self._cancelled and isinstance(error, Cancelled):
                raise StopIteration from None
            raise error from e

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()


class GenerateStream:
    """Iterates the generated tokens (Token). Once the iteration has ended, `result` holds the GenerateResult
    (text, every token, finish reason, usage, adapter) and `tail` the end of the text that no token carried (held
    back while a stop string was possible): print it after the tokens. A refusal as busy before the first token is
    retried. cancel() (or leaving a `with` block, or abandoning the iteration) frees the request's slot and ends
    the iteration, leaving `result` None."""

    def __init__(self, start: Callable[[], Any], retry: Retry):
        self._start, self._retry, self._call, self._cancelled = start, retry, None, False
        self.result: Optional[GenerateResult] = None
        self.tail = ""
        self._tokens = self._run()

    def __iter__(self) -> Iterator[Token]:
        return self._tokens

    def _run(self) -> Iterator[Token]:
        tokens: List[Token] = []
        for delay in self._retry.delays():
            self._call = self._start()
            try:
                for chunk in self._call:
                    if chunk.HasField("token"):
                        tokens.append(conv.token(chunk.token))
                        yield tokens[-1]
                    else:
                        self.result, self.tail = conv.generate_result(chunk.finish, tokens), chunk.finish.tail
                return
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                if self._cancelled and isinstance(error, Cancelled):
                    return
                # Once tokens were read a retry would repeat them: only a refusal before the first is retried.
                if tokens or delay is None or not retriable(error):
                    raise error from e
            finally:
                if self.result is None:
                    self._call.cancel()  # an abandoned iteration frees the request's slot
            time.sleep(delay)

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()


class EventSession:
    """A two-way learning stream (StreamEvents). send() learning events, subscribe() to domains' notifications,
    iterate the replies: Ack per event (in the order sent), Durable, Applied, Quarantined and Failed notifications
    of the domains followed (an event's domain is followed from its first event), Subscribed. close() ends the
    sending side: the server answers until every accepted event is applied, then the iteration ends. cancel()
    (or leaving a `with` block) ends the call at once."""

    def __init__(self, method, metadata, timeout: Optional[float]):
        self._requests: queue.Queue = queue.Queue()
        self._closed = False
        self._replies = ReplyStream(method(iter(self._requests.get, _END), timeout=timeout, metadata=metadata),
                                    conv.event_reply)

    def send(self, domain: str, event) -> None:
        """A learning event of `domain`: a dict as `hyprstream train` reads a line (with its "id"), or a
        GradientUpdate."""
        self._put(conv.event_request(domain, event))

    def subscribe(self, domain: str = "*") -> None:
        """Notifications of a domain's batches ("*": every domain)."""
        self._put(conv.subscribe_request(domain))

    def _put(self, request) -> None:
        if self._closed:
            raise RuntimeError("the session is closed for sending")
        self._requests.put(request)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._requests.put(_END)

    def cancel(self) -> None:
        self._replies.cancel()

    def __iter__(self) -> Iterator[EventReply]:
        return self._replies

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()


class Adapters:
    """The adapter registry (client.adapters)."""

    def __init__(self, stub: agrpc.AdaptersStub, unary: Callable[..., Any]):
        self._stub, self._unary = stub, unary

    def list(self) -> List[Adapter]:
        """Every adapter; a damaged one has its `error` set."""
        return [conv.adapter(a) for a in self._unary(self._stub.List, apb.ListAdaptersRequest()).adapters]

    def get(self, name: str) -> Adapter:
        return conv.adapter(self._unary(self._stub.Get, apb.GetAdapterRequest(name=name)))

    def create(self, name: str, *, rank: Optional[int] = None, alpha: Optional[float] = None,
               sparsity: Optional[float] = None, targets: Sequence[str] = (), seed: Optional[int] = None) -> Adapter:
        """A new adapter at version 1 (None: the server's defaults)."""
        request = conv.create_request(name, rank=rank, alpha=alpha, sparsity=sparsity, targets=targets, seed=seed)
        return conv.adapter(self._unary(self._stub.Create, request))

    def delete(self, name: str) -> str:
        return self._unary(self._stub.Delete, apb.DeleteAdapterRequest(name=name)).deleted

    def rollback(self, name: str, version: int) -> Adapter:
        """Makes a kept earlier version current."""
        return conv.adapter(self._unary(self._stub.Rollback, apb.RollbackAdapterRequest(name=name, version=version)))


class Client:
    """A client of `hyprstream serve`'s gRPC API at `target` ("host:port"; the server's [grpc] port, 50051 by
    default). `api_key` goes in an "authorization: Bearer" header of every call; `credentials`
    (grpc.ssl_channel_credentials(...)) make a TLS channel; `retry` sets the backoff of calls refused as busy.
    Use it as a context manager, or close() it."""

    def __init__(self, target: str, api_key: Optional[str] = None, *,
                 credentials: Optional[grpc.ChannelCredentials] = None, retry: Retry = Retry()):
        self._channel = open_channel(target, credentials, aio=False)
        self._metadata = call_metadata(api_key)
        self._retry = retry
        self._inference = igrpc.InferenceStub(self._channel)
        self._learning = lgrpc.LearningStub(self._channel)
        self._adapters = agrpc.AdaptersStub(self._channel)
        self.adapters = Adapters(self._adapters, self._unary)

    def _unary(self, method, request, *, timeout: Optional[float] = None, retry_safe: bool = True):
        return with_retry(lambda: method(request, timeout=timeout, metadata=self._metadata),
                          self._retry if retry_safe else NO_RETRY)

    # --- generation --------------------------------------------------------------------------------------------------

    def generate(self, prompt=None, *, messages=None, timeout: Optional[float] = None, **params) -> GenerateResult:
        """The whole answer to a prompt (text or token ids) or to chat `messages` ([{"role", "content"}]).
        params: max_tokens, temperature, top_p, top_k, min_p, repetition_penalty, presence_penalty,
        frequency_penalty, seed, stop, stop_token_ids, ignore_eos, top_logprobs (unset: the model's defaults);
        enable_thinking (chat); adapter (a domain; unset: the base model), adapter_scale, adapter_version (unset:
        the current one); request_id."""
        request = conv.generate_request(prompt, messages, **params)
        response = self._unary(self._inference.Generate, request, timeout=timeout)
        return conv.generate_result(response, [conv.token(t) for t in response.tokens])

    def chat(self, messages: Sequence[Mapping[str, str]], *, timeout: Optional[float] = None,
             **params) -> GenerateResult:
        """generate(messages=messages, ...): the answer to a conversation, rendered with the model's template."""
        return self.generate(messages=messages, timeout=timeout, **params)

    def stream_generate(self, prompt=None, *, messages=None, timeout: Optional[float] = None,
                        **params) -> GenerateStream:
        """The answer token by token, with generate()'s parameters: iterate the GenerateStream, then read its
        `result` and `tail`."""
        request = conv.generate_request(prompt, messages, **params)
        return GenerateStream(lambda: self._inference.StreamGenerate(request, timeout=timeout,
                                                                     metadata=self._metadata), self._retry)

    # --- learning ----------------------------------------------------------------------------------------------------

    def train_adapter(self, domain: str, examples: Sequence[Mapping[str, Any]], *, wait: bool = True,
                      timeout: Optional[float] = None) -> TrainResult:
        """Teaches a domain's adapter (created on first use) examples: {"id"?, "prompt", "completion"},
        {"id"?, "messages"} or {"id"?, "text"}. wait=True answers once the accepted examples are applied, with the
        version that holds them; wait=False once they are durable (version 0). Retried when busy only if every
        example has an id (each is applied once by id; the server makes ids for the others)."""
        examples = list(examples)
        return conv.train_result(self._unary(self._learning.Train, conv.train_request(domain, examples, wait),
                                             timeout=timeout, retry_safe=conv.all_have_ids(examples)))

    def submit_events(self, domain: str, events: Sequence[Event], *, wait: bool = True,
                      timeout: Optional[float] = None) -> TrainResult:
        """Sends learning events (dicts as `hyprstream train` reads them, each with its "id"; gradient submissions
        included) over one StreamEvents call. Events acknowledged "busy" are sent again after a backoff. Returns
        each event's acknowledgement in order; wait=True: once the accepted ones are applied, with the version;
        wait=False: once they are durable."""
        events = list(events)
        if not events:
            raise ValueError("no events to submit")
        retry = self._retry if conv.all_have_ids(events) else NO_RETRY
        return with_retry(lambda: self._submit_once(domain, events, wait, timeout), retry)

    def _submit_once(self, domain, events, wait, timeout) -> TrainResult:
        submission = Submission(domain, events, wait)
        requests: queue.Queue = queue.Queue()
        for r in submission.first():
            requests.put(r)
        call = self._learning.StreamEvents(iter(requests.get, _END), timeout=timeout, metadata=self._metadata)
        delays, closed = self._retry.delays(), False
        try:
            for reply in call:
                submission.heard(reply)
                busy = submission.busy_to_resend()
                delay = next(delays, None) if busy else None
                if delay is not None:
                    time.sleep(delay)
                    for r in submission.send(busy):
                        requests.put(r)
                if not closed and submission.acknowledged():
                    requests.put(_END)  # the server now ends the call once the accepted events are applied
                    closed = True
                if not wait and submission.durable():
                    break
        finally:
            call.cancel()  # a no-op once the server ended the call
        return submission.result()

    def stream_events(self, *, timeout: Optional[float] = None) -> EventSession:
        """A two-way learning session: see EventSession."""
        return EventSession(self._learning.StreamEvents, self._metadata, timeout)

    def update_weights(self, domain: str, updates: Iterable[GradientUpdate], *, client_id: str = "",
                       timeout: Optional[float] = None) -> UpdateSummary:
        """Streams remote workers' gradient updates of a domain (each with its id, which the server requires) in
        one call; the summary comes once every accepted update is durable. The updates are kept while the call
        runs so that a call refused as busy can be made again with all of them: each id is applied once, so the
        updates a failed attempt had sent count as duplicates in the summary."""
        sent = Replayable(conv.gradient_update(u, domain, client_id) for u in updates)
        s = with_retry(lambda: self._learning.UpdateWeights(iter(sent), timeout=timeout, metadata=self._metadata),
                       self._retry)
        return UpdateSummary(s.accepted, s.duplicates, s.durable_seq, s.version)

    def watch_versions(self, domain: str = "*", *, timeout: Optional[float] = None
                       ) -> ReplyStream[VersionPublished]:
        """Each version the server's trainers publish from now on for `domain` ("*": every domain), until
        cancel()."""
        call = self._adapters.WatchVersions(apb.WatchVersionsRequest(domain=domain), timeout=timeout,
                                            metadata=self._metadata)
        return ReplyStream(call, conv.version_published)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
