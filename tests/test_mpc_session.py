"""The MPC session layer: a real 2-party + TTP-dealer CrypTen computation, its cost accounting,
teardown on failure, and the dealer policy."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from mpcformer.config import ConfigError, build_config
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.launcher import PartyFailure, run_local

import mpc_party_fns as fns

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def two_party_run():
    torch.manual_seed(0)
    a, b = torch.randn(4, 6), torch.randn(6, 5)
    start = time.monotonic()
    results = run_local(fns.matmul_softmax_poly, args=(a.tolist(), b.tolist()), world_size=2)
    return a, b, results, time.monotonic() - start


def test_decrypted_results_match_plaintext(two_party_run):
    a, b, results, _ = two_party_run
    z = a @ b
    out = results[0]["out"]
    assert torch.allclose(torch.tensor(out["matmul"]), z, atol=1e-3)
    assert torch.allclose(torch.tensor(out["softmax"]), z.softmax(-1), atol=1e-2)
    assert torch.allclose(torch.tensor(out["poly"]), 0.125 * z * z + 0.25 * z + 0.5, atol=1e-2)
    assert results[1]["out"] == out  # both parties revealed the same values
    assert [r["rank"] for r in results] == [0, 1]


def test_cost_accounting_attributes_rounds_and_bytes(two_party_run):
    _, _, results, _ = two_party_run
    for party in results:
        cats = party["costs"]["by_category"]
        for name in ("linear", "softmax", "activation"):
            assert cats[name]["rounds"] > 0 and cats[name]["bytes"] > 0, name
        # softmax (max, exp, reciprocal) needs far more rounds than one Beaver multiplication
        assert cats["softmax"]["rounds"] > 10 * cats["activation"]["rounds"]
        total = party["costs"]["total"]
        assert total["rounds"] == pytest.approx(sum(c["rounds"] for c in cats.values()))
        assert total["bytes"] == pytest.approx(sum(c["bytes"] for c in cats.values()))
    # only party 0 talks to the TTP dealer; its traffic is kept apart
    assert results[0]["costs"]["dealer"]["rounds"] > 0
    assert results[1]["costs"]["dealer"]["rounds"] == 0


def test_dealer_exits_and_processes_end(two_party_run):
    # run_local returns only once every party *and* the dealer reported success; a dealer that
    # never exits would make it time out. Check no child process is left behind either.
    import multiprocessing

    assert multiprocessing.active_children() == []


def test_party_exception_tears_down_quickly_with_its_message():
    config = MPCConfig(timeout_s=20)
    with pytest.raises(PartyFailure) as info:
        run_local(fns.fail_on_rank, args=(1,), config=config, timeout_s=600)
    # the party's own error ended the run, not a deadline (which would name no exception)
    assert "party 1" in str(info.value) and "boom on party 1" in str(info.value)
    assert "deadline" not in str(info.value)
    import multiprocessing

    assert multiprocessing.active_children() == []


def test_stalled_party_hits_the_deadline():
    with pytest.raises(PartyFailure) as info:
        run_local(fns.sleep_forever, config=MPCConfig(timeout_s=10), timeout_s=15)
    assert "deadline" in str(info.value) or "failed" in str(info.value)


def test_insecure_dealer_needs_explicit_flag():
    with pytest.raises(ConfigError, match="insecure_dealer"):
        build_config(MPCConfig, {"dealer": "tfp"})
    assert build_config(MPCConfig, {"dealer": "tfp", "insecure_dealer": True}).dealer == "tfp"
    with pytest.raises(ConfigError, match="bogus"):
        build_config(MPCConfig, {"bogus": 1})


def test_stdlib_platform_is_not_shadowed_from_repo_root():
    from conftest import REPO_ROOT

    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}


def test_leaving_a_session_runs_the_close_hooks(tmp_path):
    """What only one session can use (the encrypted model and its masks) is dropped when it ends."""
    from mpcformer.inference import protocol as private_inference
    from mpcformer.mpc import session

    generations = run_local(fns.hook_on_close, args=(str(tmp_path / "closed"),))
    assert generations == [1, 1]  # a fresh process: its first session
    assert [(tmp_path / f"closed-{rank}").read_text() for rank in (0, 1)] == ["0", "1"]
    assert private_inference._forget_built_model in session._close_hooks


@pytest.mark.parametrize("failed", [False, True])
def test_a_clean_leave_collects_before_rank_0_dismisses_the_dealer(monkeypatch, failed):
    """Party 0 receives the dealer's answers still on their way (its prefetched range) before it says
    "terminate", so the dealer never sends into a closed connection; after an error it only drops them."""
    from mpcformer.mpc import beaver, session

    assert beaver.drain in session._clean_leave_hooks  # beaver's answers in flight
    order: list[str] = []
    monkeypatch.setattr(session, "_clean_leave_hooks", [lambda: order.append("collect")])
    monkeypatch.setattr(session, "_close_hooks", [lambda: order.append("drop")])
    monkeypatch.setattr(session.crypten, "uninit", lambda: order.append("terminate"))
    monkeypatch.setattr(session, "_release_ttp_client", lambda: None)
    party = session.MPCSession(0, 2, "tcp://127.0.0.1:1")
    party._open = True
    party.close(failed=failed)
    assert order == (["drop", "terminate"] if failed else ["collect", "drop", "terminate"])
