"""The asyncio client (grpc.aio): Client's methods as coroutines, its streams as async iterators."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, List, Mapping, Optional, Sequence, TypeVar, Union

import grpc

from . import _convert as conv
from ._proto import adapters_pb2 as apb
from ._proto import adapters_pb2_grpc as agrpc
from ._proto import inference_pb2_grpc as igrpc
from ._proto import learning_pb2_grpc as lgrpc
from ._retry import NO_RETRY, Replayable, Retry, retriable
from ._submission import Event, Submission
from .client import call_metadata, open_channel
from .errors import Cancelled, from_rpc_error
from .types import (Adapter, EventReply, GenerateResult, GradientUpdate, Token, TrainResult, UpdateSummary,
                    VersionPublished)

T = TypeVar("T")


async def with_retry(call: Callable[[], Awaitable[T]], retry: Retry) -> T:
    """await call(), again after a backoff while the server refuses it as busy; errors as HyprstreamError."""
    for delay in retry.delays():
        try:
            return await call()
        except grpc.RpcError as e:
            error = from_rpc_error(e)
            if delay is None or not retriable(error):
                raise error from e
        await asyncio.sleep(delay)


class AsyncReplyStream(AsyncIterator[T]):
    """The replies of a server-streaming call as the client's types (see client.ReplyStream)."""

    def __init__(self, call, convert: Callable[[Any], T]):
        self._call, self._convert, self._cancelled = call, convert, False
        self._replies = call.__aiter__()

    async def __anext__(self) -> T:
        try:
            return self._convert(await self._replies.__anext__())
        except grpc.RpcError as e:
            error = from_rpc_error(e)
            if self._cancelled and isinstance(error, Cancelled):
                raise StopAsyncIteration from None
            raise error from e
        except asyncio.CancelledError:
            if self._cancelled:  # grpc.aio ends a call cancelled by cancel() this way
                raise StopAsyncIteration from None
            raise

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.cancel()


class AsyncGenerateStream:
    """`async for token in stream`; then `result` and `tail` as in client.GenerateStream. cancel() (or leaving an
    `async with` block) frees the request's slot and ends the iteration."""

    def __init__(self, start: Callable[[], Any], retry: Retry):
        self._start, self._retry, self._call, self._cancelled = start, retry, None, False
        self.result: Optional[GenerateResult] = None
        self.tail = ""
        self._tokens = self._run()

    def __aiter__(self) -> AsyncIterator[Token]:
        return self._tokens

    async def _run(self) -> AsyncIterator[Token]:
        tokens: List[Token] = []
        for delay in self._retry.delays():
            self._call = self._start()
            try:
                async for chunk in self._call:
                    if chunk.HasField("token"):
                        tokens.append(conv.token(chunk.token))
                        yield tokens[-1]
                    else:
                        self.result, self.tail = conv.generate_result(chunk.finish, tokens), chunk.finish.tail
                return
            except asyncio.CancelledError:
                if self._cancelled:  # grpc.aio ends a call cancelled by cancel() this way
                    return
                raise
            except grpc.RpcError as e:
                error = from_rpc_error(e)
                # Once tokens were read a retry would repeat them: only a refusal before the first is retried.
                if tokens or delay is None or not retriable(error):
                    raise error from e
            finally:
                if self.result is None:
                    self._call.cancel()  # an abandoned iteration frees the request's slot
            await asyncio.sleep(delay)

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.cancel()


class AsyncEventSession:
    """client.EventSession for asyncio: `await send(...)`, `await subscribe(...)`, `async for reply in session`,
    `await close()`, cancel()."""

    def __init__(self, method, metadata, timeout: Optional[float]):
        self._call = method(timeout=timeout, metadata=metadata)
        self._replies = AsyncReplyStream(self._call, conv.event_reply)

    async def send(self, domain: str, event) -> None:
        await self._call.write(conv.event_request(domain, event))

    async def subscribe(self, domain: str = "*") -> None:
        await self._call.write(conv.subscribe_request(domain))

    async def close(self) -> None:
        await self._call.done_writing()

    def cancel(self) -> None:
        self._replies.cancel()

    def __aiter__(self) -> AsyncIterator[EventReply]:
        return self._replies

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.cancel()


class AsyncAdapters:
    """The adapter registry (client.adapters), as client.Adapters."""

    def __init__(self, stub: agrpc.AdaptersStub, unary: Callable[..., Awaitable[Any]]):
        self._stub, self._unary = stub, unary

    async def list(self) -> List[Adapter]:
        return [conv.adapter(a) for a in (await self._unary(self._stub.List, apb.ListAdaptersRequest())).adapters]

    async def get(self, name: str) -> Adapter:
        return conv.adapter(await self._unary(self._stub.Get, apb.GetAdapterRequest(name=name)))

    async def create(self, name: str, *, rank: Optional[int] = None, alpha: Optional[float] = None,
                     sparsity: Optional[float] = None, targets: Sequence[str] = (),
                     seed: Optional[int] = None) -> Adapter:
        request = conv.create_request(name, rank=rank, alpha=alpha, sparsity=sparsity, targets=targets, seed=seed)
        return conv.adapter(await self._unary(self._stub.Create, request))

    async def delete(self, name: str) -> str:
        return (await self._unary(self._stub.Delete, apb.DeleteAdapterRequest(name=name))).deleted

    async def rollback(self, name: str, version: int) -> Adapter:
        request = apb.RollbackAdapterRequest(name=name, version=version)
        return conv.adapter(await self._unary(self._stub.Rollback, request))


class AsyncClient:
    """Client for asyncio: the same arguments and methods, coroutines and async iterators instead (see Client).
    Use `async with AsyncClient(target) as client:`, or `await client.close()`."""

    def __init__(self, target: str, api_key: Optional[str] = None, *,
                 credentials: Optional[grpc.ChannelCredentials] = None, retry: Retry = Retry()):
        self._channel = open_channel(target, credentials, aio=True)
        self._metadata = call_metadata(api_key)
        self._retry = retry
        self._inference = igrpc.InferenceStub(self._channel)
        self._learning = lgrpc.LearningStub(self._channel)
        self._adapters = agrpc.AdaptersStub(self._channel)
        self.adapters = AsyncAdapters(self._adapters, self._unary)

    async def _unary(self, method, request, *, timeout: Optional[float] = None, retry_safe: bool = True):
        return await with_retry(lambda: method(request, timeout=timeout, metadata=self._metadata),
                                self._retry if retry_safe else NO_RETRY)

    async def generate(self, prompt=None, *, messages=None, timeout: Optional[float] = None,
                       **params) -> GenerateResult:
        request = conv.generate_request(prompt, messages, **params)
        response = await self._unary(self._inference.Generate, request, timeout=timeout)
        return conv.generate_result(response, [conv.token(t) for t in response.tokens])

    async def chat(self, messages: Sequence[Mapping[str, str]], *, timeout: Optional[float] = None,
                   **params) -> GenerateResult:
        return await self.generate(messages=messages, timeout=timeout, **params)

    def stream_generate(self, prompt=None, *, messages=None, timeout: Optional[float] = None,
                        **params) -> AsyncGenerateStream:
        request = conv.generate_request(prompt, messages, **params)
        return AsyncGenerateStream(lambda: self._inference.StreamGenerate(request, timeout=timeout,
                                                                          metadata=self._metadata), self._retry)

    async def train_adapter(self, domain: str, examples: Sequence[Mapping[str, Any]], *, wait: bool = True,
                            timeout: Optional[float] = None) -> TrainResult:
        examples = list(examples)
        response = await self._unary(self._learning.Train, conv.train_request(domain, examples, wait),
                                     timeout=timeout, retry_safe=conv.all_have_ids(examples))
        return conv.train_result(response)

    async def submit_events(self, domain: str, events: Sequence[Event], *, wait: bool = True,
                            timeout: Optional[float] = None) -> TrainResult:
        events = list(events)
        if not events:
            raise ValueError("no events to submit")
        retry = self._retry if conv.all_have_ids(events) else NO_RETRY
        return await with_retry(lambda: self._submit_once(domain, events, wait, timeout), retry)

    async def _submit_once(self, domain, events, wait, timeout) -> TrainResult:
        submission = Submission(domain, events, wait)
        call = self._learning.StreamEvents(timeout=timeout, metadata=self._metadata)
        delays, closed = self._retry.delays(), False
        try:
            for r in submission.first():
                await call.write(r)
            async for reply in call:
                submission.heard(reply)
                busy = submission.busy_to_resend()
                delay = next(delays, None) if busy else None
                if delay is not None:
                    await asyncio.sleep(delay)
                    for r in submission.send(busy):
                        await call.write(r)
                if not closed and submission.acknowledged():
                    await call.done_writing()  # the server now ends the call once the accepted events are applied
                    closed = True
                if not wait and submission.durable():
                    break
        finally:
            call.cancel()  # a no-op once the server ended the call
        return submission.result()

    def stream_events(self, *, timeout: Optional[float] = None) -> AsyncEventSession:
        return AsyncEventSession(self._learning.StreamEvents, self._metadata, timeout)

    async def update_weights(self, domain: str, updates: Union[Iterable[GradientUpdate], AsyncIterator[GradientUpdate]],
                             *, client_id: str = "", timeout: Optional[float] = None) -> UpdateSummary:
        """Client.update_weights; `updates` may be an async iterator too."""
        sent = Replayable(_converted(updates, domain, client_id))
        s = await with_retry(lambda: self._learning.UpdateWeights(sent.__aiter__(), timeout=timeout,
                                                                  metadata=self._metadata), self._retry)
        return UpdateSummary(s.accepted, s.duplicates, s.durable_seq, s.version)

    def watch_versions(self, domain: str = "*", *, timeout: Optional[float] = None
                       ) -> AsyncReplyStream[VersionPublished]:
        call = self._adapters.WatchVersions(apb.WatchVersionsRequest(domain=domain), timeout=timeout,
                                            metadata=self._metadata)
        return AsyncReplyStream(call, conv.version_published)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


async def _converted(updates, domain: str, client_id: str):
    if hasattr(updates, "__aiter__"):
        async for u in updates:
            yield conv.gradient_update(u, domain, client_id)
    else:
        for u in updates:
            yield conv.gradient_update(u, domain, client_id)
