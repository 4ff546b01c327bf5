"""Elementwise triples from streams that the dealer fills ahead (an offline phase for 2 parties).

With CrypTen's TTP every product asks the dealer for party 0's share of ``c = a·b`` and waits for
it: one more message each way per product, milliseconds on this machine, and most of a
LayerNorm's or a reciprocal's time, whose products are a few hundred elements. An elementwise
triple does not depend on the shape it is used in, only on how many elements it has. So each
kind (``mul``: a, b, c; ``square``: r, r²; ``and``: binary a, b, c; ``b2a``: a random bit in both
forms) is a stream: element ``k`` of each party's masks is element ``k`` of an AES-CTR keystream
keyed by the 128-bit key that party shares with the dealer (:mod:`mpcformer.mpc.keys`), the kind and role
(random access: the dealer computes any range). Party 1 draws its masks and its ``c`` from its
streams; party 0 draws its masks from its own and reads ``c_0 = f(a, b) - c_1`` for each range
from the dealer, which it asks for in chunks well before it needs them, so its products never
wait for the dealer. Both parties consume the streams in the same order (every party runs the
same operations), which keeps their positions in step, as CrypTen's generators are.

The dealer learns how many elements of each kind the parties use, less than the sizes CrypTen's
requests tell it; party 1 never sees party 0's masks or ``c_0``; ``c_0`` is masked by ``c_1``.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpcformer.mpc.prg import derive_key, keystream_int64

__all__ = ["KINDS", "PartyStreams", "segment", "dealer_chunk", "CHUNK_ELEMENTS"]

#: Each kind's roles: the masks every party draws, then ``c``, which party 0 gets from the dealer.
#: A kind may be named ``<family>/<parameter>``, one stream per parameter: ``trunc/<y>`` holds the
#: dealer's values of exact truncation by ``y`` (:mod:`mpcformer.mpc.truncation`), two positions per element.
KINDS: dict[str, tuple[str, ...]] = {
    "mul": ("a", "b"), "square": ("r",), "and": ("a", "b"), "b2a": ("r",), "trunc": ("r",),
}
#: Smallest range party 0 asks for at once (a LayerNorm's products are ~128 elements).
CHUNK_ELEMENTS = 1 << 16


@functools.lru_cache(maxsize=256)
def _key(key: bytes, kind: str, role: str) -> bytes:
    return derive_key(key, b"mpcformer-trip", f"{kind}/{role}".encode())


def segment(key: bytes, kind: str, role: str, start: int, count: int, device: Any = "cpu") -> torch.Tensor:
    """Elements ``start .. start + count`` (int64) of the keystream for ``key``, ``kind``, ``role``."""
    skip = start % 2  # two int64 per AES block: start at the block holding element `start`
    counter = (start // 2).to_bytes(16, "big")
    encryptor = Cipher(algorithms.AES(_key(key, kind, role)), modes.CTR(counter)).encryptor()
    return keystream_int64(encryptor, count + skip)[skip:].to(device)


def _combine(kind: str, masks: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """``f`` of the parties' masks: what ``c_0 + c_1`` must equal for ``kind``."""
    if kind.startswith("trunc/"):
        from mpcformer.mpc.truncation import dealer_values  # on use: it loads CrypTen, this module does not

        return dealer_values(masks[0]["r"] + masks[1]["r"], int(kind.split("/")[1]))
    if kind in ("mul", "square"):
        a = sum(m["a" if kind == "mul" else "r"] for m in masks)
        return a * (sum(m["b"] for m in masks) if kind == "mul" else a)
    if kind == "and":
        a, b = masks[0]["a"] ^ masks[1]["a"], masks[0]["b"] ^ masks[1]["b"]
        return a & b
    return (masks[0]["r"] ^ masks[1]["r"]) & 1  # b2a: the bit, as a ring element


def _own_masks(key: bytes, kind: str, start: int, count: int, device: Any) -> dict[str, torch.Tensor]:
    masks = {role: segment(key, kind, role, start, count, device) for role in KINDS[kind.split("/")[0]]}
    if kind == "b2a":
        masks["r"] = masks["r"] & 1  # a random bit each: the shared bit is their XOR
    return masks


def dealer_chunk(keys: list[bytes], kind: str, start: int, count: int) -> torch.Tensor:
    """The dealer's side: party 0's ``c_0`` for elements ``start .. start + count`` of ``kind``."""
    masks = [_own_masks(key, kind, start, count, "cpu") for key in keys]
    c_1 = segment(keys[1], kind, "c", start, count)
    return _combine(kind, masks) ^ c_1 if kind == "and" else _combine(kind, masks) - c_1


class PartyStreams:
    """One party's position in every stream of a session; party 0 also holds the dealer's ranges.

    ``ask(kind, start, count)`` (party 0) sends the dealer a request for a range of ``c_0`` and
    returns a handle that ``collect(handle)`` turns into the tensor.
    """

    def __init__(self, rank: int, key: bytes, device: Any, ask: Callable[[str, int, int], Any],
                 collect: Callable[[Any], torch.Tensor]):
        self.rank, self.key, self.device = rank, key, device
        self._ask, self._collect = ask, collect
        self.position: dict[str, int] = collections.defaultdict(int)  # per kind, parameterised ones included
        self._ranges: dict[str, list[list[Any]]] = collections.defaultdict(list)  # [start, count, handle|tensor]
        self._asked_end: dict[str, int] = collections.defaultdict(int)

    def take(self, kind: str, size: torch.Size) -> dict[str, torch.Tensor]:
        """This party's masks and share of ``c`` for the next ``size`` elements of ``kind``."""
        count = size.numel()
        start = self.position[kind]
        self.position[kind] += count
        shares = _own_masks(self.key, kind, start, count, self.device)
        if self.rank == 0:
            shares["c"] = self._party0_c(kind, start, count)
        else:
            shares["c"] = segment(self.key, kind, "c", start, count, self.device)
        return {role: t.view(size) for role, t in shares.items()}

    def _ask_range(self, kind: str, count: int) -> None:
        start = self._asked_end[kind]
        self._ranges[kind].append([start, count, self._ask(kind, start, count)])
        self._asked_end[kind] = start + count

    def _party0_c(self, kind: str, start: int, count: int) -> torch.Tensor:
        end = start + count
        if self._asked_end[kind] < end:
            self._ask_range(kind, max(CHUNK_ELEMENTS, end - self._asked_end[kind]))
        pieces = []
        for entry in self._ranges[kind]:
            lo, n, held = entry
            if lo >= end:
                break
            if lo + n <= start:
                continue
            if not isinstance(held, torch.Tensor):
                entry[2] = held = self._collect(held)
            pieces.append(held[max(start - lo, 0):min(end - lo, n)])
        self._ranges[kind] = [e for e in self._ranges[kind] if e[0] + e[1] > end]  # drop what is used up
        if self._asked_end[kind] - end < max(CHUNK_ELEMENTS, count):  # keep the next range on its way
            self._ask_range(kind, max(CHUNK_ELEMENTS, count))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
