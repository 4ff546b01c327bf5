"""Two-party openings by all-gather (mpcformer.mpc.exchange): CrypTen's values, rounds and bytes."""

from __future__ import annotations

import pytest


def test_the_runtime_installs_the_exchange_under_the_tap_and_restores_both():
    from mpcformer.mpc.compat import crypten  # noqa: F401  (import order: compat first)
    from crypten.communicator import DistributedCommunicator

    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.runtime import Runtime

    original = DistributedCommunicator.all_reduce
    runtime = Runtime(MPCConfig(), parties=2).install()
    try:
        ours = DistributedCommunicator.all_reduce
        assert runtime.applied("exchange") and ours is not original
        assert ours.__name__ == "all_reduce"  # CrypTen counts by name
        assert getattr(ours, "__mpcformer_tap__", False)  # the tap wraps the exchange, not CrypTen's
    finally:
        runtime.restore()
    assert DistributedCommunicator.all_reduce is original
    runtime = Runtime(MPCConfig(fast_exchange=False), parties=2).install()
    try:
        assert not runtime.applied("exchange")
        assert DistributedCommunicator.all_reduce.__wrapped__ is original  # only the tap
    finally:
        runtime.restore()


@pytest.fixture(scope="module")
def openings():
    from mpcformer.mpc.launcher import run_local

    import exchange_party_fns as fns

    return run_local(fns.openings_both_ways, timeout_s=180)


def test_the_session_installs_the_exchange(openings):
    assert all(party["installed_by_session"] for party in openings)


def test_openings_match_cryptens_all_reduce_values_rounds_and_bytes(openings):
    for party in openings:
        ours, theirs = party["mpcformer"], party["crypten"]
        assert ours["single"] == theirs["single"]
        assert ours["pair"] == theirs["pair"]
        assert ours["rounds"] == theirs["rounds"] == 3  # one per opening, batched or not
        assert ours["bytes"] == theirs["bytes"] > 0
    assert openings[0]["mpcformer"]["single"] == openings[1]["mpcformer"]["single"]


def test_sums_wrap_like_the_ring_and_other_ops_keep_cryptens_all_reduce(openings):
    for party in openings:
        for way in ("mpcformer", "crypten"):
            wrapped = party[way]["wrapped"]
            assert wrapped == [-(2**63), 2**63 - 1, -(2**63), 0]  # 2^63 and 2^63 - 1 + 1 wrap
            assert party[way]["max"] == [1.0, 5.0]
