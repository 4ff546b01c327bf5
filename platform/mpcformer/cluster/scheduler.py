"""A pool of K party groups working through a list of MPC work items, rebuilding groups that fail.

    pool = GroupPool(PartyGroupConfig(), PoolConfig(groups=2), name="infer")
    for done in pool.run(items):          # yields as items complete, in completion order
        ...                               # done.item, done.results (by rank), done.attempts

Each of the K slots is a driver thread holding one :class:`PartyGroup`; it takes the next item,
runs it and starts over. When a group fails (a party or the dealer died, stalled or raised), the
slot records the failure, waits ``backoff_s * 2**(failures-1)`` (at most ``backoff_max_s``), builds
a fresh group and re-runs the item, at most ``max_attempts`` times. A failure a retry cannot fix (a
party raised :class:`~mpcformer.errors.UserError` or refused the operation, the cluster cannot
place a group) stops dispatching; items already running finish, then :class:`JobFailed` is raised
(:class:`PartyRejected`, a ``UserError`` naming the party, when a party rejected its input).
Whatever happens, every group is shut down before ``run`` returns or raises: no actors or
placement groups outlive it; with ``keep_groups`` the groups of a run that finished every item
stay up for the next ``run`` (steps of one job) until :meth:`GroupPool.close`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from pydantic import Field

from mpcformer.cluster.config import PartyGroupConfig
from mpcformer.cluster.party_group import GroupFailure, PartyCall, PartyGroup
from mpcformer.config import StrictModel
from mpcformer.errors import PartyFailure, UserError
from mpcformer.observability import safe_record

__all__ = ["PoolConfig", "WorkItem", "ItemDone", "FailureEvent", "JobFailed", "PartyRejected", "GroupPool"]

log = logging.getLogger(__name__)


class PoolConfig(StrictModel):
    """How many groups run at once and how failed items are retried."""

    groups: int = Field(default=1, ge=1, description="K party groups running concurrently")
    max_attempts: int = Field(default=3, ge=1, description="tries per item (first run plus retries)")
    backoff_s: float = Field(default=1.0, ge=0, description="wait before rebuilding a failed group; doubles")
    backoff_max_s: float = Field(default=30.0, ge=0)


@dataclass(frozen=True)
class WorkItem:
    """One unit of MPC work: ``calls[rank]`` runs on party ``rank``; ``key`` names it in logs."""

    key: str
    calls: tuple[PartyCall, ...]


@dataclass(frozen=True)
class ItemDone:
    item: WorkItem
    results: list[Any]
    attempts: int
    group: str
    wall_s: float


@dataclass(frozen=True)
class FailureEvent:
    """A failed attempt, as reported to ``on_failure`` and kept in ``GroupPool.failures``."""

    item: str
    attempt: int
    group: str
    who: str
    cause: str
    will_retry: bool


class JobFailed(PartyFailure):
    """An item failed in a way retries could not fix; the message has the last cause."""

    def __init__(self, message: str, who: str = "the job"):
        super().__init__(who, message, text=message)


class PartyRejected(JobFailed, UserError):
    """A party rejected its input (it raised UserError): one line naming the party and the problem."""


@dataclass(frozen=True)
class _Fatal:
    error: BaseException


class _Slot:
    """One worker thread's state: its current group (the main thread may stop it)."""

    def __init__(self, index: int):
        self.index = index
        self.group: PartyGroup | None = None
        self.failures = 0


class GroupPool:
    """K party groups; see the module docstring."""

    def __init__(
        self,
        group_config: PartyGroupConfig,
        config: PoolConfig | None = None,
        name: str = "mpcformer",
        on_failure: Callable[[FailureEvent], None] | None = None,
        model: str = "",
        keep_groups: bool = False,
    ):
        self.group_config = group_config
        self.keep_groups = keep_groups
        self._slots: list[_Slot] = []
        self.model = model  # a metrics label only
        self.config = config or PoolConfig()
        self.name = name
        self.on_failure = on_failure
        self.failures: list[FailureEvent] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}  # approximation -> items running now

    def run(self, items: Sequence[WorkItem]) -> Iterator[ItemDone]:
        """Yield each item's result as it completes; raise :class:`JobFailed` after a fatal failure."""
        pending = collections.deque(items)
        outbox: queue.Queue = queue.Queue()
        wanted = min(self.config.groups, len(pending))
        self._slots += [_Slot(i) for i in range(len(self._slots), wanted)]
        slots = self._slots[:wanted]
        threads = [
            threading.Thread(
                target=self._work, args=(slot, pending, outbox), name=f"{self.name}-slot{slot.index}", daemon=True
            )
            for slot in slots
        ]
        self._stop.clear()
        fatal: BaseException | None = None
        finished_all = False
        try:
            for thread in threads:
                thread.start()
            finished = 0
            while finished < len(threads):
                message = outbox.get()
                if message is None:
                    finished += 1
                elif isinstance(message, _Fatal):
                    fatal = fatal or message.error
                    self._stop.set()
                else:
                    yield message
            finished_all = fatal is None
        finally:
            self._stop.set()
            if not (finished_all and self.keep_groups):  # an interruption: stop groups that are mid-item
                self._shutdown(slots)
            for thread in threads:
                thread.join(timeout=self.group_config.shutdown_timeout_s + 5)
        if fatal is not None:
            raise fatal

    def close(self) -> None:
        """Shut down the groups kept between runs (``keep_groups``). Safe to call twice."""
        self._shutdown(self._slots)

    def _shutdown(self, slots: Sequence[_Slot]) -> None:
        for slot in slots:
            group = slot.group  # a worker thread may clear it meanwhile
            if group is not None:
                self._health(slot, False)
                group.shutdown()
                slot.group = None

    # -- worker threads ------------------------------------------------------------------------
    def _take(self, pending: collections.deque) -> WorkItem | None:
        with self._lock:
            return pending.popleft() if pending and not self._stop.is_set() else None

    def _work(self, slot: _Slot, pending: collections.deque, outbox: queue.Queue) -> None:
        try:
            while (item := self._take(pending)) is not None:
                message = self._run_item(slot, item)
                outbox.put(message)
                if isinstance(message, _Fatal):
                    break
        except BaseException as err:  # a bug here must not hang the driver
            outbox.put(_Fatal(err))
        finally:
            group = slot.group
            if group is not None and not (self.keep_groups and group.is_running):
                self._health(slot, False)
                group.shutdown()
                slot.group = None
            outbox.put(None)

    def _health(self, slot: _Slot, up: bool) -> None:
        """One health series per pool slot (``<job>-g<i>``), not per rebuilt group."""
        safe_record("set_group_health", up, job=self.name, group=f"{self.name}-g{slot.index}")

    @contextlib.contextmanager
    def _counted_in_flight(self, item: WorkItem) -> Iterator[None]:
        approx = item.key.split("/", 1)[0]  # item keys are "<combo>/<batch>"
        self._add_in_flight(approx, +1)
        try:
            yield
        finally:
            self._add_in_flight(approx, -1)

    def _add_in_flight(self, approx: str, delta: int) -> None:
        with self._lock:
            count = self._in_flight[approx] = self._in_flight.get(approx, 0) + delta
        safe_record("set_batches_in_flight", count, job=self.name, model=self.model, approx=approx)

    def _run_item(self, slot: _Slot, item: WorkItem) -> ItemDone | _Fatal:
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                if slot.group is None or not slot.group.is_running:
                    slot.group = PartyGroup(self.group_config, name=f"{self.name}-g{slot.index}")
                    slot.group.start()
                    self._health(slot, True)
                tic = time.monotonic()
                with self._counted_in_flight(item):
                    results = slot.group.run(list(item.calls))
                slot.failures = 0
                return ItemDone(item, results, attempt, slot.group.name, time.monotonic() - tic)
            except GroupFailure as failure:
                group_name = slot.group.name if slot.group is not None else "?"
                self._health(slot, False)
                slot.group = None  # already torn down by PartyGroup
                if self._stop.is_set():
                    return _Fatal(JobFailed(f"stopped while running {item.key}"))
                will_retry = failure.retryable and attempt < self.config.max_attempts
                self._record(FailureEvent(item.key, attempt, group_name, failure.who, failure.cause, will_retry))
                if failure.user_message is not None:
                    return _Fatal(PartyRejected(f"{failure.who} rejected its input: {failure.user_message}", failure.who))
                if not will_retry:
                    reason = "" if failure.retryable else " (not retryable)"
                    return _Fatal(JobFailed(f"{item.key} failed after {attempt} attempt(s){reason}: {failure}", failure.who))
                slot.failures += 1
                delay = min(self.config.backoff_max_s, self.config.backoff_s * 2 ** (slot.failures - 1))
                if self._stop.wait(delay):
                    return _Fatal(JobFailed(f"stopped while waiting to retry {item.key}"))
            except BaseException as err:  # PlacementError (user must act) or an unexpected bug
                if slot.group is not None:
                    slot.group.shutdown()
                    slot.group = None
                return _Fatal(err)
        raise AssertionError("unreachable")

    def _record(self, event: FailureEvent) -> None:
        log.warning(
            "%s attempt %d on %s: %s failed: %s%s", event.item, event.attempt, event.group, event.who, event.cause,
            " - rebuilding the group and retrying" if event.will_retry else "",
        )
        with self._lock:
            self.failures.append(event)
        if self.on_failure is not None:
            self.on_failure(event)
