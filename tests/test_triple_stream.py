"""Triple streams (mpcformer.mpc.triple_stream): random access into the keystreams, the dealer's
ranges complete the parties' shares to valid triples, and party 0 asks ahead in ranges."""

from __future__ import annotations

import pytest
import torch

from mpcformer.mpc import triple_stream as ts

SEEDS = [bytes(range(16)), bytes(range(100, 116))]  # 128-bit keys, as the session binds


def test_any_range_is_the_same_slice_of_the_keystream():
    whole = ts.segment(SEEDS[0], "mul", "a", 0, 1000)
    for start, count in [(0, 1), (1, 7), (2, 100), (333, 667), (999, 1)]:
        assert torch.equal(ts.segment(SEEDS[0], "mul", "a", start, count), whole[start:start + count])
    assert not torch.equal(ts.segment(SEEDS[0], "mul", "b", 0, 1000), whole)  # roles are independent
    assert not torch.equal(ts.segment(SEEDS[1], "mul", "a", 0, 1000), whole)  # and parties


def _party_shares(kind: str, start: int, count: int) -> list[dict[str, torch.Tensor]]:
    """Both parties' shares as PartyStreams hands them out, party 0's c from the dealer's range."""
    shares = []
    for rank, seed in enumerate(SEEDS):
        masks = ts._own_masks(seed, kind, start, count, "cpu")
        masks["c"] = ts.dealer_chunk(SEEDS, kind, start, count) if rank == 0 else ts.segment(seed, kind, "c", start, count)
        shares.append(masks)
    return shares


@pytest.mark.parametrize("start", [0, 5])
def test_the_dealers_ranges_make_valid_triples_of_every_kind(start):
    p0, p1 = _party_shares("mul", start, 4096)
    assert torch.equal(p0["c"] + p1["c"], (p0["a"] + p1["a"]) * (p0["b"] + p1["b"]))  # mod 2^64
    p0, p1 = _party_shares("square", start, 4096)
    assert torch.equal(p0["c"] + p1["c"], (p0["r"] + p1["r"]) ** 2)
    p0, p1 = _party_shares("and", start, 4096)
    assert torch.equal(p0["c"] ^ p1["c"], (p0["a"] ^ p1["a"]) & (p0["b"] ^ p1["b"]))
    p0, p1 = _party_shares("b2a", start, 4096)
    bit = p0["r"] ^ p1["r"]
    assert set(p0["r"].unique().tolist()) == {0, 1} and set(bit.unique().tolist()) == {0, 1}
    assert torch.equal(p0["c"] + p1["c"], bit)  # the same bit, shared arithmetically


class _FakeDealer:
    """Stands in for party 0's link to the dealer: records the asks, answers on collect."""

    def __init__(self):
        self.asked: list[tuple[str, int, int]] = []
        self.collected = 0

    def ask(self, kind: str, start: int, count: int):
        self.asked.append((kind, start, count))
        return (kind, start, count)

    def collect(self, handle) -> torch.Tensor:
        self.collected += 1
        return ts.dealer_chunk(SEEDS, *handle)


def test_party0_asks_in_ranges_ahead_and_both_parties_stay_in_step():
    dealer = _FakeDealer()
    owner = ts.PartyStreams(0, SEEDS[0], "cpu", dealer.ask, dealer.collect)
    client = ts.PartyStreams(1, SEEDS[1], "cpu", dealer.ask, dealer.collect)
    sizes = [torch.Size([128])] * 600 + [torch.Size([3, 50_000]), torch.Size([7])]  # crosses ranges
    for size in sizes:
        mine, theirs = owner.take("mul", size), client.take("mul", size)
        assert mine["a"].shape == size
        assert torch.equal(mine["c"] + theirs["c"], (mine["a"] + theirs["a"]) * (mine["b"] + theirs["b"]))
    total = sum(s.numel() for s in sizes)
    assert owner.position["mul"] == client.position["mul"] == total
    assert client.position["square"] == 0 and not [a for a in dealer.asked if a[0] != "mul"]
    # Ranges are contiguous, at least CHUNK_ELEMENTS long, and always one range ahead of use.
    starts = [start for _, start, _ in dealer.asked]
    assert starts[0] == 0 and all(a[1] + a[2] == b[1] for a, b in zip(dealer.asked, dealer.asked[1:]))
    assert all(count >= ts.CHUNK_ELEMENTS for _, _, count in dealer.asked)
    assert dealer.asked[-1][1] + dealer.asked[-1][2] > total
    assert len(dealer.asked) < 10 and dealer.collected < len(dealer.asked)  # the last range is not yet needed
