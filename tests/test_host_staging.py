"""Host staging of CrypTen's exchanges (what CUDA parties use; gloo moves CPU tensors only).

Staging is forced on CPU tensors here, through real copies, so a received value that is not
copied back into the caller's tensor shows up as a wrong result. The CUDA path itself is
exercised by tests/test_cuda.py on a machine with a GPU.
"""

from __future__ import annotations

import pytest
import torch

from mpcformer.mpc.launcher import run_local

import mpc_party_fns as fns

pytestmark = pytest.mark.timeout(300)

P0, P1 = [10, 11, 12, 13], [20, 21, 22, 23]


def test_every_primitive_delivers_through_host_copies():
    results = run_local(fns.staged_primitives, world_size=2)
    for rank, mine, theirs in ((0, P0, P1), (1, P1, P0)):
        out = results[rank]["out"]
        assert out["recv"] == theirs and out["irecv"] == theirs
        assert out["broadcast"] == P1 and out["broadcast_async"] == P0 and out["broadcast_strided"] == P1
        assert out["all_reduce"] == out["all_reduce_async"] == [a + b for a, b in zip(P0, P1)]
        assert out["all_gather"] == [P0, P1]
        assert out["scatter"] == ([7] * 4 if rank == 0 else [8] * 4)
        assert results[rank]["staged"] >= 15  # every tensor went through the staging predicate
    assert results[1]["out"]["reduce"] == [a + b for a, b in zip(P0, P1)]
    assert results[0]["out"]["gather"] == [P0, P1]


def test_without_copy_back_received_values_are_lost():
    # The control: the same exchanges with the copy-back switched off leave the receivers' tensors
    # as they were, so the test above really runs through the staged copies.
    results = run_local(fns.staged_primitives, args=(True,), world_size=2)
    out = results[0]["out"]
    assert out["recv"] == [0, 0, 0, 0] and out["broadcast"] == P0 and out["all_gather"] == [[0] * 4] * 2


def test_encrypted_arithmetic_matches_plaintext_when_staged():
    torch.manual_seed(0)
    a, b = torch.randn(3, 5), torch.randn(5, 4)
    results = run_local(fns.staged_encrypted_ops, args=(a.tolist(), b.tolist()), world_size=2)
    z = a @ b
    out = results[0]["out"]
    assert torch.allclose(torch.tensor(out["matmul"]), z, atol=1e-3)
    assert torch.allclose(torch.tensor(out["product"]), a * a, atol=1e-3)
    assert torch.allclose(torch.tensor(out["relu"]), z.relu(), atol=1e-3)
    assert torch.allclose(torch.tensor(out["softmax"]), z.softmax(-1), atol=1e-2)
    assert torch.allclose(torch.tensor(results[1]["out"]["to_client"]), z, atol=1e-3)
    assert results[0]["out"]["to_client"] is None
    assert not results[0]["installed_after"]


def test_cuda_session_without_a_gpu_says_what_to_do():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: tests/test_cuda.py covers the CUDA session")
    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.session import MPCSession, SessionError

    with pytest.raises(SessionError, match="device 'cuda' but torch sees no GPU.*use device: cpu"):
        MPCSession(0, 2, "tcp://127.0.0.1:1", MPCConfig(device="cuda")).__enter__()
