"""submit_events over one StreamEvents call, without the I/O (shared by Client and AsyncClient): which events to
send (again), and when the call has what it waits for.

The server acknowledges the events of a stream in the order it reads them, so the n-th acknowledgement answers
the n-th event sent. An event acknowledged "busy" was not taken (the domain's queue was full): it is sent again
after a backoff. Once every event has a final acknowledgement the client closes its side, and the server ends the
call when the accepted events are applied; a caller waiting only for durability stops at the Durable
notifications instead."""
from __future__ import annotations

from collections import deque
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Union

from ._convert import event_request, event_reply
from ._proto import learning_pb2 as lpb
from .types import Ack, Applied, Durable, EventResult, GradientUpdate, Quarantined, TrainResult

Event = Union[Mapping[str, Any], GradientUpdate]


class Submission:
    def __init__(self, domain: str, events: Sequence[Event], wait_applied: bool):
        self.domain, self.events, self.wait_applied = domain, events, wait_applied
        self.results: List[Optional[EventResult]] = [None] * len(events)
        self._sent: deque = deque()  # indices of the events whose acknowledgement is still to come
        self._busy: List[int] = []
        self._durable: Set[str] = set()
        self._versions: Dict[str, int] = {}
        self._quarantined: Dict[str, str] = {}

    def send(self, indices: Sequence[int]) -> List[lpb.StreamEventsRequest]:
        self._sent.extend(indices)
        return [event_request(self.domain, self.events[i]) for i in indices]

    def first(self) -> List[lpb.StreamEventsRequest]:
        return self.send(range(len(self.events)))

    def heard(self, reply: lpb.StreamEventsResponse) -> None:
        r = event_reply(reply)
        if isinstance(r, Ack):
            i = self._sent.popleft()
            self.results[i] = EventResult(r.id, r.status, r.error)
            if r.status == "busy":
                self._busy.append(i)
        elif isinstance(r, Durable):
            self._durable.update(r.ids)
        elif isinstance(r, Applied):
            self._versions.update((i, r.version) for i in r.ids)
        elif isinstance(r, Quarantined):
            self._quarantined.update((i, r.reason) for i in r.ids)

    def busy_to_resend(self) -> List[int]:
        """The events refused as busy, once every acknowledgement of the round is in (one backoff per round)."""
        if self._sent:
            return []
        busy, self._busy = self._busy, []
        return busy

    def acknowledged(self) -> bool:
        """Every event has its acknowledgement, and none waits to be sent again."""
        return not self._sent and not self._busy

    def durable(self) -> bool:
        """Every accepted event is in the write-ahead log (what a caller not waiting for applied needs)."""
        return self.acknowledged() and self._accepted() <= self._durable

    def result(self) -> TrainResult:
        accepted = self._accepted()
        versions = [v for i, v in self._versions.items() if i in accepted] if self.wait_applied else []
        return TrainResult(self.domain, list(self.results), max(versions, default=0),
                           {i: why for i, why in self._quarantined.items() if i in accepted})

    def _accepted(self) -> Set[str]:
        return {r.id for r in self.results if r is not None and r.status == "accepted"}
