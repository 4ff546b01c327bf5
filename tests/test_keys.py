"""Session keys (mpcformer.mpc.keys): every seed is a fresh 128-bit value from the OS, the pairs
line up, nothing of them follows from torch's generator, and no two sessions share one."""

from __future__ import annotations

import pytest
import torch

from mpcformer.mpc import keys
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.launcher import run_local

import keys_party_fns as fns

pytestmark = pytest.mark.timeout(300)


def test_new_keys_are_128_bits_from_the_os(monkeypatch):
    calls = []

    def token_bytes(n):
        calls.append(n)
        return bytes([len(calls)]) * n

    monkeypatch.setattr(keys.secrets, "token_bytes", token_bytes)
    assert keys.new_key() == bytes([1]) * 16 and calls == [16]


def _torch_replay(seed: int, count: int = 200_000) -> set[int]:
    """What CrypTen's dealer could hand out as seeds: the first ``count`` ``torch.randint`` draws of
    a generator with ``seed`` (a window: the process may have drawn other values first)."""
    generator = torch.Generator().manual_seed(seed)
    return set(torch.randint(-(2**63), 2**63 - 1, size=(count,), generator=generator).tolist())


def _key_words(key_hex: str) -> set[int]:
    """The key read as signed 64-bit words (either half) and as one unsigned integer."""
    raw = bytes.fromhex(key_hex)
    words = {int.from_bytes(raw[i:i + 8], order, signed=True) for i in (0, 8) for order in ("little", "big")}
    return words | {int.from_bytes(raw, "little")}


def test_every_session_key_is_fresh_os_randomness_and_the_pairs_line_up():
    owner, client = run_local(fns.session_keys_report, args=(), timeout_s=180)
    assert client["product"] == pytest.approx([6.0, -0.5], abs=1e-3)  # parties and dealer draw alike
    for party in (owner, client):
        found = party["keys"]
        assert set(found) == {"prev", "next", "local", "global", "dealer"}
        assert all(len(bytes.fromhex(key)) == 16 for key in found.values())  # 128 bits each
        drawn = set(party["drawn"])
        assert {len(bytes.fromhex(d)) for d in drawn} == {16}
        # the keys this party drew itself came from secrets.token_bytes in its process (bound per
        # device: derived from what was drawn, never the drawn bytes themselves)
        assert len(drawn) >= 3
        replay = _torch_replay(fns.TORCH_DEFAULT_SEED) | _torch_replay(party["dealer_torch_seed"])
        for key in found.values():
            assert not (_key_words(key) & replay), "a key follows from torch's generator"
    assert owner["keys"]["next"] == client["keys"]["prev"] and client["keys"]["next"] == owner["keys"]["prev"]
    assert owner["keys"]["global"] == client["keys"]["global"]
    assert owner["keys"]["local"] != client["keys"]["local"]
    assert owner["keys"]["dealer"] != client["keys"]["dealer"]
    assert owner["keys"]["next"] != owner["keys"]["prev"]


class _FakeServer:
    """What a dealer's generator set-up touches: its group; sends and the barrier are captured."""

    ttp_group = object()


def _dealer_sends(monkeypatch, setup) -> list[torch.Tensor]:
    """Run a dealer's generator set-up for 2 parties against a stand-in communicator; what it sent."""
    from crypten import communicator as comm

    sent = []

    class _Done:
        def wait(self):
            return None

    class _Comm:
        def get_world_size(self):
            return 2

    monkeypatch.setattr(comm, "get", lambda: _Comm())
    monkeypatch.setattr(keys.dist, "isend", lambda tensor, dst, group: sent.append(tensor.clone()) or _Done())
    monkeypatch.setattr(keys.dist, "barrier", lambda group: None)
    import crypten.mpc.provider.ttp_provider as ttp

    monkeypatch.setattr(ttp.dist, "isend", lambda tensor, dst, group: sent.append(tensor.clone()) or _Done())
    monkeypatch.setattr(ttp.dist, "barrier", lambda group: None)
    setup(_FakeServer())
    return sent


def test_the_dealers_keys_do_not_follow_from_its_torch_generator(monkeypatch):
    """Replaying the dealer's torch generator from its initial seed gives CrypTen's seeds (the
    positive control) and none of mpcformer's keys, which are what the OS generator returned."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    torch.manual_seed(1234)
    stock = _dealer_sends(monkeypatch, TTPServer._setup_generators)
    replay = _torch_replay(torch.initial_seed(), count=1000)
    assert {int(seed) for seed in stock} <= replay  # CrypTen's seeds: torch.randint of the default generator

    drawn = []
    real_token_bytes = keys.secrets.token_bytes
    monkeypatch.setattr(keys.secrets, "token_bytes", lambda n: drawn.append(real_token_bytes(n)) or drawn[-1])
    torch.manual_seed(1234)
    ours = _dealer_sends(monkeypatch, keys.dealer_setup)
    assert [bytes(t.tolist()) for t in ours] == drawn and all(len(key) == 16 for key in drawn)
    for key in drawn:
        assert not (_key_words(key.hex()) & replay)


def test_two_sessions_of_one_dealer_actor_share_no_key():
    """One dealer actor and two party actors serve two sessions one after the other: every key of
    the second session is new."""
    from pathlib import Path

    ray = pytest.importorskip("ray")
    from mpcformer.actors.dealer import DealerActor
    from mpcformer.actors.party import PartyActor
    from mpcformer.operations import EXTRA_MODULES_ENV, operation_name

    mpc = MPCConfig(timeout_s=60).model_dump()
    env = {EXTRA_MODULES_ENV: fns.__name__, "PYTHONPATH": str(Path(fns.__file__).parent)}
    ray.init(address="local", num_cpus=3, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        parties = [PartyActor.remote(rank, 2, mpc, "keys") for rank in range(2)]
        dealer = DealerActor.remote(2, mpc, "keys")
        sessions = []
        for _ in range(2):
            rendezvous = ray.get(parties[0].rendezvous_address.remote())
            serving = dealer.serve.remote(rendezvous)
            ray.get([party.open.remote(rendezvous) for party in parties], timeout=120)
            reports = ray.get([party.run.remote(operation_name(fns.session_keys_report)) for party in parties], timeout=120)
            ray.get([party.close.remote() for party in parties], timeout=60)
            ray.get(serving, timeout=60)
            sessions.append({f"{rank}/{role}": key for rank, r in enumerate(reports) for role, key in r["keys"].items()})
        first, second = sessions
        assert len(first) == len(second) == 10 and not set(first.values()) & set(second.values())
    finally:
        ray.shutdown()
