"""Two-party openings by all-gather (mpcformer.mpc.exchange): CrypTen's values, rounds and bytes."""

from __future__ import annotations

import pytest


def test_install_is_idempotent_and_uninstall_restores():
    from mpcformer.mpc import exchange
    from crypten.communicator import DistributedCommunicator

    before = DistributedCommunicator.all_reduce
    try:
        exchange.uninstall()
        original = DistributedCommunicator.all_reduce
        exchange.install()
        exchange.install()
        assert exchange.is_installed() and DistributedCommunicator.all_reduce is not original
        assert DistributedCommunicator.all_reduce.__name__ == "all_reduce"  # CrypTen counts by name
        exchange.uninstall()
        assert DistributedCommunicator.all_reduce is original and not exchange.is_installed()
    finally:
        exchange.uninstall()
        if before is not DistributedCommunicator.all_reduce:
            exchange.install()


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
