"""When and how the client calls again after the server said RESOURCE_EXHAUSTED (README "Python client")."""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Generic, Iterable, Iterator, List, Optional, TypeVar, Union

from .errors import HyprstreamError, ResourceExhausted

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with full jitter: at most `attempts` calls; before the n-th retry (from 0) the client
    waits a random time up to min(max_backoff, initial_backoff * multiplier**n) seconds, so that clients refused
    together do not come back together. Retry(attempts=1) turns retries off."""
    attempts: int = 8
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[Optional[float]]:
        """The wait before each retry, then None: give up."""
        for n in range(self.attempts - 1):
            yield random.uniform(0, min(self.max_backoff, self.initial_backoff * self.multiplier ** n))
        yield None


NO_RETRY = Retry(attempts=1)


def retriable(error: HyprstreamError) -> bool:
    """A refusal that the same call may overcome later: a full queue (kind "busy") or the server's thread pool
    (no kind). A message over the size limit is RESOURCE_EXHAUSTED too, and never passes."""
    return isinstance(error, ResourceExhausted) and (
        error.kind == "busy" or (error.kind is None and "larger than max" not in error.details))


class Replayable(Generic[T]):
    """The items of a client stream, kept as they are read, so that each attempt of the call sends all of them
    from the first (a retry resends what the failed attempt sent). Items a failed attempt's sender thread read
    after it failed are kept too: the next attempt sends them. Iterate it (Client) or async-iterate it over an
    async iterator (AsyncClient)."""

    def __init__(self, source: Union[Iterable[T], AsyncIterator[T]]):
        self._source = source
        self._seen: List[T] = []
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[T]:
        self._source = iter(self._source)  # later attempts go on reading the same iterator
        i = 0
        while True:
            with self._lock:
                if i == len(self._seen):
                    item = next(self._source, _END)
                    if item is _END:
                        return
                    self._seen.append(item)
                item = self._seen[i]
            i += 1
            yield item

    async def __aiter__(self) -> AsyncIterator[T]:
        i = 0  # one event loop: attempts never read at the same time, so no lock
        while True:
            if i == len(self._seen):
                try:
                    self._seen.append(await self._source.__anext__())
                except StopAsyncIteration:
                    return
            yield self._seen[i]
            i += 1


_END = object()
