"""Cost accounting: wall time, communication time, rounds and bytes per operation category and layer.

A :class:`CostLedger` attributes every moment and every exchange of a party to exactly one scope,
the innermost open one, so the categories add up to the total. Traffic with the dealer (party 0's
requests for Beaver triples) is kept apart from party-to-party traffic, with the number of requests.

    ledger = CostLedger()
    with ledger.active():
        with ledger.scope("linear", layer=0):
            y = x.matmul(w)
    ledger.by_category()["linear"].rounds
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch

from mpcformer.mpc import tap

__all__ = ["CATEGORIES", "OpCost", "CostLedger"]

#: Operation categories, in the order reports show them.
CATEGORIES = (
    "embedding", "linear", "attention-matmul", "softmax", "activation",
    "layernorm", "pooler", "classifier", "other",
)


@dataclass
class OpCost:
    """Cost of one category (or layer) on one party."""

    time_s: float = 0.0
    comm_time_s: float = 0.0
    rounds: float = 0.0
    bytes: float = 0.0

    def add(self, other: "OpCost") -> None:
        self.time_s += other.time_s
        self.comm_time_s += other.comm_time_s
        self.rounds += other.rounds
        self.bytes += other.bytes

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class CostLedger:
    """Per-party ledger keyed by ``(category, layer)``; ``layer`` is ``None`` outside the encoder."""

    entries: dict[tuple[str, int | None], OpCost] = field(default_factory=dict)
    dealer: OpCost = field(default_factory=OpCost)
    dealer_requests: int = 0
    _stack: list[tuple[str, int | None]] = field(default_factory=list)
    _mark: float = 0.0

    # -- listener protocol (see mpcformer.mpc.tap) ------------------------------------------
    def before(self, op: str, with_dealer: bool, args: tuple, kwargs: dict) -> None:
        pass

    def after(self, event: tap.CommEvent) -> None:
        if event.with_dealer:
            # Dealer exchanges are counted apart; their time is still the current scope's wall time.
            self.dealer.add(OpCost(event.seconds, event.seconds, event.rounds, event.bytes))
            self.dealer_requests += event.op == "send_obj"  # each request is one pickled message
            return
        self._current().add(OpCost(0.0, event.seconds, event.rounds, event.bytes))

    # -- scopes --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self) -> Iterator["CostLedger"]:
        """Listen to the communicator while the block runs; time outside scopes goes to 'other'."""
        tap.add_listener(self)
        self._stack = [("other", None)]
        self._mark = time.perf_counter()
        try:
            yield self
        finally:
            self._flush_time()
            self._stack = []
            tap.remove_listener(self)

    @contextlib.contextmanager
    def scope(self, category: str, layer: int | None = None) -> Iterator[None]:
        """Attribute what runs inside to ``category`` (and ``layer``), exclusive of inner scopes."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown cost category '{category}'; known: {', '.join(CATEGORIES)}")
        if not self._stack:  # not active: scopes are free no-ops
            yield
            return
        if layer is None:
            layer = self._stack[-1][1]
        self._flush_time()
        self._stack.append((category, layer))
        try:
            yield
        finally:
            self._flush_time()
            self._stack.pop()

    def _current(self) -> OpCost:
        key = self._stack[-1] if self._stack else ("other", None)
        return self.entries.setdefault(key, OpCost())

    def _flush_time(self) -> None:
        if torch.cuda.is_initialized():  # GPU kernels run asynchronously: charge them to their scope
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._stack:
            self._current().time_s += now - self._mark
        self._mark = now

    # -- reports -------------------------------------------------------------------------------
    def by_category(self) -> dict[str, OpCost]:
        out: dict[str, OpCost] = {}
        for (category, _layer), cost in self.entries.items():
            out.setdefault(category, OpCost()).add(cost)
        return out

    def by_layer(self) -> dict[int, OpCost]:
        out: dict[int, OpCost] = {}
        for (_category, layer), cost in self.entries.items():
            if layer is not None:
                out.setdefault(layer, OpCost()).add(cost)
        return out

    def total(self) -> OpCost:
        out = OpCost()
        for cost in self.entries.values():
            out.add(cost)
        return out

    def to_dict(self) -> dict:
        """Plain data (safe to return across processes and actors)."""
        return {
            "total": self.total().to_dict(),
            "dealer": {**self.dealer.to_dict(), "requests": self.dealer_requests},
            "by_category": {k: v.to_dict() for k, v in self.by_category().items()},
            "by_layer": {str(k): v.to_dict() for k, v in sorted(self.by_layer().items())},
        }
