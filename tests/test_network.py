"""Network simulation: analytic projection and emulation agree."""

from __future__ import annotations

import pytest
import torch

from mpcformer.errors import UserError
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.launcher import run_local
from mpcformer.mpc.network import PROFILES, NetworkProfile, dealer_terms, project_latency, resolve_profile

import mpc_party_fns as fns


def test_profiles_and_formula():
    wan = resolve_profile("wan")
    assert wan.rtt_s == pytest.approx(0.04) and wan.bandwidth_bps == pytest.approx(1e8)
    assert resolve_profile("custom:1000:5").rtt_s == pytest.approx(0.005)
    # 10 rounds x 40 ms + 1 MB over 100 Mbit/s = 0.4 + 0.08 s
    assert project_latency(1.0, 10, 1e6, wan) == pytest.approx(1.48)
    assert PROFILES["lan"].comm_seconds(10, 0) < PROFILES["wan"].comm_seconds(10, 0)
    with pytest.raises(UserError, match="custom"):
        resolve_profile("moon")


@pytest.mark.timeout(300)
def test_emulated_run_matches_analytic_projection():
    values = torch.randn(4, 16).tolist()
    base = run_local(fns.timed_softmax, args=(values,))[0]
    link = NetworkProfile(name="test", bandwidth_bps=50e6, rtt_s=0.05, mode="emulate")
    emulated = run_local(fns.timed_softmax, args=(values,), config=MPCConfig(network=link))[0]
    rounds, nbytes = base["total"]["rounds"], base["total"]["bytes"]
    assert emulated["total"]["rounds"] == rounds  # the link changes time, not the protocol
    link_s = link.comm_seconds(rounds, nbytes)
    assert link_s > 2.0  # the link dominates, so the check means something
    # The time the link added, compared on communication time: the local compute's pace (a loaded
    # machine, first-call costs) differs between the two runs and is no part of the emulation.
    added = emulated["total"]["comm_time_s"] - base["total"]["comm_time_s"]
    assert abs(added - link_s) / link_s < 0.15, (added, link_s)
    compute_s = emulated["total"]["time_s"] - emulated["total"]["comm_time_s"]
    projected = project_latency(compute_s + base["total"]["comm_time_s"], rounds, nbytes, link)
    measured = emulated["total"]["time_s"]
    assert abs(measured - projected) / projected < 0.15, (measured, projected)


@pytest.mark.timeout(400)
def test_the_dealer_link_is_emulated_and_overlap_hides_it():
    """The dealer is online: without overlap every request waits one more rtt, in both forms."""
    values = torch.randn(4, 16).tolist()
    link = NetworkProfile(name="latency", bandwidth_bps=10e9, rtt_s=0.1, mode="emulate")  # the link dominates
    measured, projected = {}, {}
    for overlap in (False, True):
        # A request per product (stream_triples would fetch the elementwise triples in a few ranges).
        per_product = MPCConfig(overlap_dealer=overlap, stream_triples=False)
        base = run_local(fns.timed_softmax, args=(values,), config=per_product)[0]
        emulated = run_local(
            fns.timed_softmax, args=(values,), config=per_product.model_copy(update={"network": link})
        )[0]
        total, dealer = base["total"], base["dealer"]
        assert emulated["dealer"]["requests"] == dealer["requests"] > 20  # party 0 asks for every product
        projected[overlap] = project_latency(
            total["time_s"], total["rounds"], total["bytes"], link, **dealer_terms(dealer, overlap)
        )
        measured[overlap] = emulated["total"]["time_s"]
        assert abs(measured[overlap] - projected[overlap]) / projected[overlap] < 0.15, (overlap, measured, projected)
    # Overlapping hides the dealer's round trips behind the openings. (Not all of each rtt shows
    # without overlap either: an answer is due rtt after its request, and the real local round
    # trip, a few ms, is part of that rtt.)
    assert measured[False] - measured[True] > 0.5 * dealer["requests"] * link.rtt_s, measured
