"""Leak test harness (test-only): record what each party sends and holds, then look for secrets in it.

Two halves:

1. :class:`LeakTap`, a listener on :mod:`mpcformer.mpc.tap`. Inside a party's MPC session it keeps a
   copy of every tensor the party sends (``send``, ``reduce``, ``all_reduce``, ``gather``,
   ``all_gather``, ``broadcast`` as source, ``scatter``, ``send_obj``/``broadcast_obj`` payloads),
   of every buffer the dealer fills for it (CrypTen's TTP answers party 0 with a ``broadcast``), and
   of what the party *holds* afterwards: while the tap is on, every ``torch.distributed`` collective
   and receive (``reduce``, ``all_reduce``, ``broadcast``, ``gather``, ``all_gather``, ``scatter``,
   ``recv``, ``irecv``) is spied on, and each buffer the call wrote to (including a non-root party's
   buffer of a ``reduce``, which gloo leaves holding summed chunks) is copied after the call (an
   asynchronous one at the next call or when the tap closes), as are the objects ``recv_obj`` and
   ``broadcast_obj`` return.

       with LeakTap(rank) as tap:
           y = crypten.cryptensor(x, src=1).matmul(w_enc)
       tap.save(path)          # list of Transfer, read back with load_transfers(path)

2. :func:`find_leaks`, run afterwards on the transfers of *all* parties, with the :class:`Secret`
   values each party may or may not know. It checks

   - what each party *sent* (the raw wire contents),
   - what each party *holds* after each collective and receive (``where="held"``), and
   - what each party *learned* from a reduction: pairing the k-th ``all_reduce``/``reduce``/
     ``all_gather``/``gather`` of every party gives the value the receivers reconstruct (the sum
     of the shares, or their XOR for binary shares). A Beaver opening ``x - a`` is uniform in the
     ring; a reveal (``get_plain_text``) is the plaintext, so this is where a protocol that decrypts
     an intermediate value shows up even though no plaintext ever travels.

   A secret is *found* in a tensor when it appears in one of these trivial forms: as plaintext
   floats, encoded in fixed point (``round(x * 2**precision_bits)``, CrypTen's encoder), either
   sign, in any shape or order (flattened, transposed, sliced): real-valued secrets are matched as
   a set of values (at least ``min_matches`` distinct secret values within ``tolerance``), token
   ids as a run of consecutive ids, and as one-hot rows (0/1 or 0/2**16 indicators whose positions
   spell the ids, row-major or transposed). Uniformly random 64-bit ring elements essentially never
   land within one fixed-point step of a secret value, so honest MPC traffic matches nothing.

   Set matching is sensitive but not specific for *dense* secrets (a large table of small random
   weights holds a value at almost every fixed-point step of its range): any real values in that
   range match it. A tensor that is a secret its receivers may know (the client's logits) is
   therefore treated as a legitimate reveal and not compared with the other secrets, and a leak of
   one weight may be reported under its look-alike siblings as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

import torch

__all__ = [
    "DEALER",
    "Transfer",
    "LeakTap",
    "Secret",
    "Leak",
    "Exchange",
    "pair_exchanges",
    "find_leaks",
    "describe_leaks",
    "checkable",
    "MIN_SHARE",
    "load_transfers",
]

#: Stand-in rank of the dealer in ``Transfer.receivers`` (CrypTen's TTP rank is the world size).
DEALER = -1

_REDUCTIONS = ("all_reduce", "reduce", "all_gather", "gather")
#: A real secret is found in a tensor only if this share of its plausible (non-random) elements match.
MIN_SHARE = 0.5
#: ... and a tensor is a legitimate reveal if this share matches a secret its receivers may know.
EXPLAINED_SHARE = 0.9
_MIN_OBJECT_LIST = 8  # plain lists in send_obj payloads shorter than this (sizes, flags) are ignored


# ----------------------------------------------------------------------------- recording
@dataclass
class Transfer:
    """One communicator call of one party and copies of the tensors it moved.

    ``sent`` went from ``party`` to ``receivers`` (ranks, :data:`DEALER` for the dealer);
    ``received`` are buffers the call filled with a peer's (or the dealer's) data.
    ``held`` are the buffers a ``torch.distributed`` call left in the party's memory (``op`` is then
    ``"dist.<name>"``) or the objects a receive returned: all the party could keep.
    ``reduce_op`` is ``"sum"`` (arithmetic shares) or ``"xor"`` (binary shares) for reductions.
    """

    party: int
    index: int
    op: str
    with_dealer: bool
    receivers: frozenset[int]
    sent: list[torch.Tensor] = field(default_factory=list)
    received: list[torch.Tensor] = field(default_factory=list)
    reduce_op: str = ""
    held: list[torch.Tensor] = field(default_factory=list)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def _tensors_in(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    """Tensors inside a ``send_obj`` payload: tensors, arrays, numeric lists (not short size tuples)."""
    if depth > 6 or obj is None or isinstance(obj, (str, bytes, bool, int, float, torch.Size)):
        return []
    if torch.is_tensor(obj):
        return [_copy(obj)]
    if type(obj).__module__ == "numpy" and hasattr(obj, "dtype"):
        return [torch.as_tensor(obj).clone()]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _tensors_in(value, depth + 1)]
    if isinstance(obj, (list, tuple)):
        if all(isinstance(value, torch.Size) for value in obj):
            return []  # shapes (the dealer's requests)
        numeric = _numeric_list(obj)
        if numeric is not None:
            return [numeric] if numeric.numel() >= _MIN_OBJECT_LIST else []
        return [t for value in obj for t in _tensors_in(value, depth + 1)]
    if hasattr(obj, "__dict__"):  # e.g. a pickled CrypTensor: its shares are attributes
        return [t for value in vars(obj).values() for t in _tensors_in(value, depth + 1)]
    return []


def _numeric_list(obj: list | tuple) -> torch.Tensor | None:
    try:
        tensor = torch.tensor(obj)
    except (TypeError, ValueError, RuntimeError):
        return None
    return tensor if tensor.dtype != torch.bool else tensor.long()


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [_copy(value)]
    if isinstance(value, (list, tuple)):
        return [_copy(t) for t in value if torch.is_tensor(t)]
    return []


def _reduce_op_name(op: Any) -> str:
    return "xor" if "BXOR" in str(op).upper() else "sum"


class LeakTap:
    """Listener (see :mod:`mpcformer.mpc.tap`) keeping copies of everything one party sends.

    Use inside an open MPC session, as a context manager; ``transfers`` holds the records in call
    order, :meth:`save` writes them for :func:`load_transfers` in another process.
    """

    def __init__(self, rank: int):
        self.rank = rank
        self.transfers: list[Transfer] = []
        self._pending: list[tuple[Transfer, Any, tuple]] = []
        self._world_size = 2
        self._groups: dict[str, Any] = {}

    def __enter__(self) -> "LeakTap":
        from mpcformer.mpc import tap
        from mpcformer.mpc.compat import crypten

        comm = crypten.communicator.get()
        self._world_size = comm.get_world_size()
        self._groups = {"ttp": getattr(comm, "ttp_group", None), "ttp_comm": getattr(comm, "ttp_comm_group", None)}
        tap.add_listener(self)
        self._spy = _DistSpy(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        from mpcformer.mpc import tap

        self._spy.close()
        tap.remove_listener(self)

    # -- listener protocol ---------------------------------------------------------------------
    def before(self, op: str, with_dealer: bool, args: tuple, kwargs: dict) -> None:
        record = Transfer(self.rank, len(self.transfers), op, with_dealer, frozenset())
        filled = self._classify(record, args, kwargs)
        self.transfers.append(record)
        if filled is not None:
            self._pending.append((record, filled, args))

    def after(self, event: Any) -> None:
        if self._pending and self._pending[-1][2] is event.args:
            record, buffer, _ = self._pending.pop()
            record.received = _flat_tensors(buffer)
        if event.op in ("recv_obj", "broadcast_obj") and event.result is not None:
            record = Transfer(self.rank, len(self.transfers), event.op, event.with_dealer, frozenset())
            record.held = _tensors_in(event.result)
            self.transfers.append(record)

    def _held(self, op: str, with_dealer: bool, buffers: list[torch.Tensor]) -> None:
        """What a ``torch.distributed`` call left in this party's buffers (see :class:`_DistSpy`)."""
        record = Transfer(self.rank, len(self.transfers), f"dist.{op}", with_dealer, frozenset())
        record.held = [_copy(b) for b in buffers]
        self.transfers.append(record)

    # -- what each call sends ------------------------------------------------------------------
    def _others(self) -> frozenset[int]:
        return frozenset(r for r in range(self._world_size) if r != self.rank)

    def _group_members(self, group: Any) -> frozenset[int]:
        if group is not None and group is self._groups.get("ttp"):
            return self._others() | {DEALER}
        if group is not None and group is self._groups.get("ttp_comm"):
            return frozenset({0, DEALER}) - {self.rank}
        return self._others()

    def _rank_or_dealer(self, rank: int) -> int:
        return DEALER if rank == self._world_size else rank

    def _classify(self, record: Transfer, args: tuple, kwargs: dict) -> Any:
        """Fill ``record.sent``/``receivers``; return a buffer the call fills (to copy afterwards)."""
        op = record.op
        if op in ("send", "isend"):
            record.sent, record.receivers = _flat_tensors(_arg(args, kwargs, 0, "tensor")), frozenset(
                {self._rank_or_dealer(_arg(args, kwargs, 1, "dst"))}
            )
        elif op == "send_obj":
            record.sent = _tensors_in(_arg(args, kwargs, 0, "obj"))
            record.receivers = frozenset({self._rank_or_dealer(_arg(args, kwargs, 1, "dst"))})
        elif op in ("reduce", "gather"):
            dst = _arg(args, kwargs, 1, "dst")
            record.sent = _flat_tensors(_arg(args, kwargs, 0, "input" if op == "reduce" else "tensor"))
            record.receivers = frozenset({dst}) - {self.rank}
            record.reduce_op = _reduce_op_name(_arg(args, kwargs, 2, "op")) if op == "reduce" else ""
        elif op in ("all_reduce", "all_gather"):
            record.sent = _flat_tensors(_arg(args, kwargs, 0, "input" if op == "all_reduce" else "tensor"))
            record.receivers = self._others()
            record.reduce_op = _reduce_op_name(_arg(args, kwargs, 1, "op")) if op == "all_reduce" else ""
        elif op == "scatter" and _arg(args, kwargs, 1, "src") == self.rank:
            record.sent, record.receivers = _flat_tensors(_arg(args, kwargs, 0, "scatter_list")), self._others()
        elif op in ("broadcast", "broadcast_obj"):
            return self._classify_broadcast(record, args, kwargs)
        return None

    def _classify_broadcast(self, record: Transfer, args: tuple, kwargs: dict) -> Any:
        payload = _arg(args, kwargs, 0, "input" if record.op == "broadcast" else "obj")
        src = _arg(args, kwargs, 1, "src")
        if src != self.rank:
            return payload if record.op == "broadcast" else None  # a receive buffer, filled by the call
        record.receivers = self._group_members(_arg(args, kwargs, 2, "group"))
        record.sent = _flat_tensors(payload) if record.op == "broadcast" else _tensors_in(payload)
        return None

    def save(self, path: str | Path) -> Path:
        """Write the transfers with ``torch.save`` (plain dataclasses of CPU tensors)."""
        path = Path(path)
        torch.save([vars(t) for t in self.transfers], path)
        return path


#: ``torch.distributed`` functions that write into a party's buffers, and which arguments they write.
_WRITES = {
    "reduce": ("tensor",), "all_reduce": ("tensor",), "broadcast": ("tensor",), "recv": ("tensor",),
    "irecv": ("tensor",), "gather": ("tensor", "gather_list"), "all_gather": ("tensor_list", "tensor"),
    "scatter": ("tensor",), "all_gather_into_tensor": ("output_tensor",),
}


_BYTES = (torch.int8, torch.uint8)


class _DistSpy:
    """Wraps the ``torch.distributed`` functions of :data:`_WRITES` while a :class:`LeakTap` is on and
    copies each buffer they wrote to after the call: what a party that keeps its buffers holds."""

    def __init__(self, tap: LeakTap):
        import contextlib
        import inspect

        import torch.distributed as dist

        from mpcformer.mpc import runtime

        self._tap = tap
        self._async: list[tuple[str, bool, list[torch.Tensor]]] = []  # completed later
        spies = {name: self._wrap(name, getattr(dist, name), inspect.signature(getattr(dist, name))) for name in _WRITES}
        self._spying = contextlib.ExitStack()
        self._spying.enter_context(runtime.swapped(dist, spies))  # the runtime's one door into torch

    def _wrap(self, name: str, fn: Any, signature: Any) -> Any:
        def spied(*args: Any, **kwargs: Any) -> Any:
            self._flush()
            result = fn(*args, **kwargs)
            bound = signature.bind_partial(*args, **kwargs).arguments
            # Bytes are pickled objects (recv_obj, broadcast_obj) or keys: objects are read as objects.
            buffers = [
                t for arg in _WRITES[name] for t in _flat_tensors(bound.get(arg)) if t.dtype not in _BYTES
            ]
            with_dealer = self._is_dealer(bound.get("group"))
            if name == "irecv" or bound.get("async_op"):
                self._async.append((name, with_dealer, buffers))  # written once the work completes
            else:
                self._tap._held(name, with_dealer, buffers)
            return result

        return spied

    def _is_dealer(self, group: Any) -> bool:
        return group is not None and any(group is g for g in self._tap._groups.values() if g is not None)

    def _flush(self) -> None:
        pending, self._async = self._async, []
        for name, with_dealer, buffers in pending:
            self._tap._held(name, with_dealer, buffers)

    def close(self) -> None:
        self._flush()
        self._spying.close()


def load_transfers(*paths: str | Path) -> list[Transfer]:
    """Read back what :meth:`LeakTap.save` wrote (one file per party), in one list."""
    transfers: list[Transfer] = []
    for path in paths:
        transfers += [Transfer(**fields) for fields in torch.load(path, weights_only=False)]
    return transfers


# ----------------------------------------------------------------------------- what parties learn
@dataclass(frozen=True)
class Exchange:
    """A value some parties reconstruct from one reduction: ``learners`` now know ``values``."""

    index: int
    op: str
    learners: frozenset[int]
    values: tuple[torch.Tensor, ...]


def _combine(shares: list[torch.Tensor], how: str) -> torch.Tensor:
    out = shares[0].clone()
    for share in shares[1:]:
        if how == "xor":
            out = out ^ share
        else:
            out = out + share  # int64 wraps around: the ring Z_{2^64}
    return out


def pair_exchanges(transfers: Iterable[Transfer]) -> list[Exchange]:
    """Pair the k-th party-to-party reduction of every party into the value its receivers learn.

    ``all_reduce``/``reduce`` combine by their op (sum or XOR); a gather hands every share over, so
    both the sum and the XOR are reported. Raises ``ValueError`` if the parties' calls disagree.
    """
    by_party: dict[int, list[Transfer]] = {}
    for t in transfers:
        if t.op in _REDUCTIONS and not t.with_dealer:
            by_party.setdefault(t.party, []).append(t)
    if len(by_party) < 2:
        return []
    parties = sorted(by_party)
    counts = {p: len(by_party[p]) for p in parties}
    if len(set(counts.values())) != 1:
        raise ValueError(f"parties made different numbers of reductions {counts}: record every party in one session")
    exchanges = []
    for k, calls in enumerate(zip(*(by_party[p] for p in parties))):
        ops = {c.op for c in calls}
        if len(ops) != 1 or len({len(c.sent) for c in calls}) != 1:
            raise ValueError(f"reduction {k} differs between parties: {[c.op for c in calls]}")
        op = calls[0].op
        learners = frozenset(parties) if op.startswith("all_") else _reduction_destination(calls, parties)
        hows = ("sum", "xor") if op.endswith("gather") else (calls[0].reduce_op or "sum",)
        values = tuple(
            _combine([c.sent[i] for c in calls], how) for i in range(len(calls[0].sent)) for how in hows
        )
        exchanges.append(Exchange(k, op, learners, values))
    return exchanges


def _reduction_destination(calls: tuple[Transfer, ...], parties: list[int]) -> frozenset[int]:
    """The party of a ``reduce``/``gather`` that sent to nobody is the destination."""
    return frozenset(c.party for c in calls if not c.receivers) or frozenset(parties)


# ----------------------------------------------------------------------------- secrets
@dataclass(frozen=True)
class Secret:
    """A value only ``may_know`` parties may see in the clear.

    ``kind="real"``: float values (weights, embeddings, activations), matched as a set of values
    within ``tolerance`` (real units; one fixed-point step is always allowed), found when at least
    ``min_matches`` distinct secret values appear (capped at the number of distinct values) and at
    least :data:`MIN_SHARE` of the tensor's non-random elements match; secrets with fewer than
    ``min_distinct`` distinct values are not checked.
    ``kind="ids"``: integer token ids (B, T), found as a run of ``min_run`` consecutive ids, or as
    one-hot rows over ``vocab_size`` columns.
    """

    name: str
    values: torch.Tensor
    may_know: frozenset[int]
    kind: Literal["real", "ids"] = "real"
    tolerance: float = 0.0
    min_matches: int = 16
    vocab_size: int | None = None
    min_run: int = 4
    min_distinct: int = 8

    @classmethod
    def real(cls, name: str, values: torch.Tensor, may_know: Iterable[int], **options: Any) -> "Secret":
        return cls(name, values.detach().to(torch.float64).cpu(), frozenset(may_know), "real", **options)

    @classmethod
    def token_ids(cls, name: str, ids: torch.Tensor, may_know: Iterable[int], vocab_size: int, **options: Any) -> "Secret":
        ids = torch.as_tensor(ids).long().cpu()
        return cls(name, ids.reshape(-1, ids.shape[-1]), frozenset(may_know), "ids", vocab_size=vocab_size, **options)


@dataclass(frozen=True)
class Leak:
    """Where a secret was found: ``where`` is ``sent`` (wire contents), ``held``, ``learned`` or ``received``."""

    secret: str
    where: str
    party: int | None
    to: frozenset[int]
    op: str
    index: int
    form: str
    matched: int

    def __str__(self) -> str:
        who = "" if self.party is None else f"party {self.party} "
        to = ", ".join("dealer" if r == DEALER else f"party {r}" for r in sorted(self.to))
        return (
            f"{self.secret!r} {self.where} ({who}{self.op} #{self.index} -> {to}) as {self.form}, "
            f"{self.matched} values matched"
        )


@dataclass
class _Reading:
    """One wire tensor read once, for every secret: ``reals`` are its distinct plausible
    fixed-point values (``(form, values)``, both signs), ``magnitudes`` its elements as integers,
    sign dropped, and ``has_small`` whether any is a plausible id or one-hot entry."""

    reals: list[tuple[str, torch.Tensor]]
    magnitudes: tuple[str, torch.Tensor]
    has_small: bool


def _read(tensor: torch.Tensor, scale: int) -> _Reading:
    """Plausible elements are fixed-point reals of magnitude in (1, 2^24 * scale): uniformly random
    ring elements almost never are, so honest shares drop out here; so do bits (0/1 shares of
    comparisons), which carry too little to match a secret's value."""
    flat = tensor.reshape(-1)
    limit = float(2**62)
    if flat.dtype.is_floating_point:
        flat = torch.nan_to_num(flat.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
        rounded = flat.round().clamp(-limit, limit).to(torch.int64)
        views = [("plaintext floats", (flat * scale).round().clamp(-limit, limit).to(torch.int64)), ("scaled floats", rounded)]
        magnitudes = ("floats", rounded.abs())
    else:
        flat = flat.to(torch.int64)
        views = [("ring elements", flat)]
        magnitudes = ("ring elements", flat.abs())  # abs(int64 min) stays negative: never an id
    reals = []
    for form, view in views:
        size = view.abs()
        plausible = torch.unique(view[(size > 1) & (size < scale * 2**24)])
        reals += [(form, plausible), (f"{form}, negated", -plausible)]
    mag = magnitudes[1]
    return _Reading(reals, magnitudes, bool(((mag >= 1) & (mag < scale * 2**24)).any()))


@dataclass(frozen=True)
class _Prepared:
    secret: Secret
    table: torch.Tensor  # sorted distinct encoded values (real) or id rows (ids)
    tol: int
    needed: int


def _prepare(secret: Secret, scale: int) -> _Prepared:
    if secret.kind == "ids":
        return _Prepared(secret, secret.values, 0, secret.min_run if checkable(secret) else 0)
    encoded = (secret.values.reshape(-1) * scale).round().to(torch.int64)
    table = torch.unique(encoded)  # sorted
    tol = max(1, int(round(secret.tolerance * scale)))
    return _Prepared(secret, table, tol, min(secret.min_matches, table.numel()) if checkable(secret) else 0)


def checkable(secret: Secret) -> bool:
    """Whether a value match can tell ``secret`` apart from chance: real secrets need at least
    ``min_distinct`` distinct values (a LayerNorm weight of all ones cannot be told from a 1.0
    in a public attention mask); ids need a row of ``min_run`` tokens."""
    if secret.kind == "ids":
        return secret.values.shape[-1] >= secret.min_run
    return torch.unique(secret.values).numel() >= secret.min_distinct


def _match_real(prep: _Prepared, values: torch.Tensor) -> tuple[int, float]:
    """``(distinct secret values within tol of some value, share of the values that matched)``."""
    table = prep.table
    if values.numel() == 0 or table.numel() == 0:
        return 0, 0.0
    pos = torch.searchsorted(table, values).clamp(max=table.numel() - 1)
    below = (pos - 1).clamp(min=0)
    d_pos, d_below = (values - table[pos]).abs(), (values - table[below]).abs()
    nearest = torch.where(d_below < d_pos, below, pos)
    hit = torch.minimum(d_pos, d_below) <= prep.tol
    return int(torch.unique(nearest[hit]).numel()), float(hit.float().mean())


def _find_real(prep: _Prepared, reading: _Reading, min_share: float = MIN_SHARE) -> tuple[str, int] | None:
    for form, values in reading.reals:
        matched, share = _match_real(prep, values)
        if prep.needed and matched >= prep.needed and share >= min_share:
            return form, matched
    return None


def _windows(rows: torch.Tensor, length: int) -> set[tuple[int, ...]]:
    """Every ``length``-token slice of the id rows with at least 3 distinct ids (not runs of padding)."""
    out = set()
    for row in rows.tolist():
        for start in range(0, len(row) - length + 1):
            window = tuple(row[start : start + length])
            if len(set(window)) >= min(3, length):
                out.add(window)
    return out


def _has_run(sequence: list[int], windows: set[tuple[int, ...]], length: int) -> bool:
    return any(tuple(sequence[i : i + length]) in windows for i in range(len(sequence) - length + 1))


def _runs(positions: torch.Tensor, values: torch.Tensor, length: int) -> list[list[int]]:
    """Split hit positions into runs of consecutive positions; keep runs of at least ``length``."""
    if positions.numel() < length:
        return []
    breaks = torch.nonzero(positions.diff() != 1).reshape(-1) + 1
    bounds = [0, *breaks.tolist(), positions.numel()]
    return [values[a:b].tolist() for a, b in zip(bounds, bounds[1:]) if b - a >= length]


def _ids_as_run(prep: _Prepared, view: torch.Tensor, windows: set, length: int, scale: int) -> str | None:
    """Token ids written one after another (times 1 or the fixed-point scale), any slice of a row."""
    for factor, form in ((1, "token ids"), (scale, "fixed-point token ids")):
        positions = torch.nonzero(torch.isin(view, torch.unique(prep.table) * factor)).reshape(-1)
        for run in _runs(positions, view[positions] // factor, length):
            if _has_run(run, windows, length):
                return form
    return None


def _ids_as_one_hot(prep: _Prepared, view: torch.Tensor, windows: set, length: int, scale: int) -> str | None:
    """One-hot rows over the vocabulary (0/1 or 0/2^p), row-major (..., V) or transposed (V, ...)."""
    vocab = prep.secret.vocab_size
    if not vocab:
        return None
    diff_windows = {tuple(vocab + b - a for a, b in zip(w, w[1:])) for w in windows}
    for factor, form in ((1, "one-hot rows"), (scale, "fixed-point one-hot rows")):
        ones = view == factor
        hits = torch.nonzero(ones).reshape(-1)
        if hits.numel() < length:
            continue
        if _has_run(hits.diff().tolist(), diff_windows, length - 1):  # row-major: rows V apart
            return form
        if view.numel() % vocab == 0:  # transposed: (V, N), one hit per column
            columns = ones.reshape(vocab, -1)
            single = columns.sum(0) == 1
            decoded = torch.where(single, columns.to(torch.int8).argmax(0), -1)
            if _has_run(decoded.tolist(), windows, length):
                return f"{form}, transposed"
    return None


def _find_ids(prep: _Prepared, reading: _Reading, scale: int) -> tuple[str, int] | None:
    """Ids (either sign) as sent, or for a batch transposed ((B, T) sent as (T, B))."""
    if not prep.needed or not reading.has_small:
        return None
    length = min(prep.needed, prep.table.shape[-1])
    windows = _windows(prep.table, length)
    form, view = reading.magnitudes
    batch = prep.table.shape[0]
    views = [(form, view)]
    if batch > 1 and view.numel() % batch == 0:
        views.append((f"{form}, transposed", view.reshape(-1, batch).t().reshape(-1)))
    for form, view in views:
        found = _ids_as_run(prep, view, windows, length, scale) or _ids_as_one_hot(prep, view, windows, length, scale)
        if found:
            return f"{found} ({form})", prep.needed
    return None


def _explained(reading: _Reading, allowed: list[_Prepared]) -> bool:
    """A tensor that *is* a secret its receivers may know (the client's logits: about as many
    distinct values, nearly all matching) is a legitimate reveal; its values are not also held
    against other secrets that merely cover the same range."""
    size = reading.reals[0][1].numel()
    return any(
        size <= 2 * prep.table.numel() and _find_real(prep, reading, EXPLAINED_SHARE) is not None for prep in allowed
    )


def find_leaks(transfers: Iterable[Transfer], secrets: Iterable[Secret], precision_bits: int = 16) -> list[Leak]:
    """Every place a secret reaches a party (or the dealer) outside its ``may_know`` set.

    Checks each party's sent tensors against the receivers, what each party holds after every
    collective and receive against that party, the values each reduction reveals
    (:func:`pair_exchanges`) against the learners, and the dealer's answers against their receiver.
    """
    transfers = list(transfers)
    scale = 2**precision_bits
    prepared = [p for p in (_prepare(s, scale) for s in secrets) if p.needed]
    leaks: list[Leak] = []

    def check(tensors: Iterable[torch.Tensor], seen_by: frozenset[int], where: str, party, op, index) -> None:
        concerned = [p for p in prepared if not seen_by <= p.secret.may_know]
        if not concerned:
            return
        allowed = [p for p in prepared if seen_by <= p.secret.may_know and p.secret.kind == "real"]
        readings = [r for r in (_read(tensor, scale) for tensor in tensors) if not _explained(r, allowed)]
        for prep in concerned:
            for reading in readings:
                found = _find_real(prep, reading) if prep.secret.kind == "real" else _find_ids(prep, reading, scale)
                if found:
                    leaks.append(Leak(prep.secret.name, where, party, seen_by, op, index, *found))
                    break

    for t in transfers:
        check(t.sent, t.receivers, "sent", t.party, t.op, t.index)
        if t.with_dealer and t.received:
            check(t.received, frozenset({t.party}), "received from the dealer", t.party, t.op, t.index)
        if t.held:
            check(t.held, frozenset({t.party}), "held", t.party, t.op, t.index)
    for ex in pair_exchanges(transfers):
        check(ex.values, ex.learners, "learned", None, ex.op, ex.index)
    return leaks


def describe_leaks(leaks: Iterable[Leak]) -> str:
    """One line per leak (for assertion messages)."""
    return "\n".join(str(leak) for leak in leaks) or "no leaks"
