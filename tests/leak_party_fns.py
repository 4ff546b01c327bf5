"""Party functions for the leak tests (module level: spawned party processes import them).

Each records its party's traffic with :class:`leak_tap.LeakTap` (tests/leak_tap.py) and saves it under
``out_dir`` (``<phase>-party<rank>.pt``); the test process pairs the parties' files.
"""

from __future__ import annotations

from pathlib import Path

import torch

OWNER, CLIENT = 0, 1


def _embed_and_project(ids: list, table: list, weight: list, bias: list, vocab: int):
    """Encrypted ``relu-free`` toy model: one-hot(ids) @ table -> quad -> @ weight.T + bias."""
    from mpcformer.mpc.compat import crypten

    rank = crypten.communicator.get().get_rank()
    ids_t = torch.tensor(ids)  # (B, T)
    one_hot = torch.nn.functional.one_hot(ids_t, vocab).float() if rank == CLIENT else torch.zeros(*ids_t.shape, vocab)
    own = lambda values: torch.tensor(values) if rank == OWNER else torch.zeros_like(torch.tensor(values))  # noqa: E731
    x = crypten.cryptensor(one_hot, src=CLIENT)  # (B, T, V), the client's
    emb = crypten.cryptensor(own(table), src=OWNER)  # (V, H), the owner's
    w = crypten.cryptensor(own(weight), src=OWNER)  # (O, H)
    b = crypten.cryptensor(own(bias), src=OWNER)  # (O,)
    hidden = x.matmul(emb)  # (B, T, V) @ (V, H) -> (B, T, H)
    hidden = hidden.square() * 0.125 + hidden * 0.25 + 0.5  # MPCFormer's quad
    logits = hidden.matmul(w.t()) + b  # (B, T, H) @ (H, O) -> (B, T, O)
    return hidden, logits


def linear_honest_then_leaky(rank: int, out_dir: str, ids: list, table: list, weight: list, bias: list, vocab: int) -> dict:
    """Phase ``honest``: the toy model, logits revealed to the client only. Phase ``stock``: the same
    with CrypTen's ``get_plain_text(dst=client)``. Phase ``leaky``: the honest one plus deliberate
    leaks (the positive controls the detector must flag)."""
    from mpcformer.mpc.compat import crypten
    from leak_tap import LeakTap
    from mpcformer.mpc.reveal import reveal_to

    comm = crypten.communicator.get()
    out = Path(out_dir)
    with LeakTap(rank) as honest:
        _, logits = _embed_and_project(ids, table, weight, bias, vocab)
        revealed = reveal_to(logits, CLIENT)
    honest.save(out / f"honest-party{rank}.pt")

    with LeakTap(rank) as stock:  # CrypTen's own one-sided reveal: a reduce onto the client
        _, logits = _embed_and_project(ids, table, weight, bias, vocab)
        logits.get_plain_text(dst=CLIENT)
    stock.save(out / f"stock-party{rank}.pt")

    with LeakTap(rank) as leaky:
        hidden, _ = _embed_and_project(ids, table, weight, bias, vocab)
        # 1. the owner sends its weight transposed, fixed-point encoded and negated
        enc_w = -(torch.tensor(weight).t() * 2**16).round().long() if rank == OWNER else torch.zeros(len(weight[0]), len(weight), dtype=torch.long)
        comm.broadcast(enc_w, OWNER)
        # 2. the owner sends one row of its embedding table as a plain list inside an object
        comm.broadcast_obj(torch.tensor(table)[3].tolist() if rank == OWNER else None, OWNER)
        # 3. the client sends its one-hot rows transposed (V, B*T), in plaintext floats
        one_hot = torch.nn.functional.one_hot(torch.tensor(ids), vocab).float().reshape(-1, vocab).t().contiguous()
        comm.broadcast(one_hot if rank == CLIENT else torch.zeros_like(one_hot), CLIENT)
        # 4. the client sends a slice of its token ids, fixed-point encoded
        sliced = torch.tensor(ids)[0, 1:6] * 2**16
        comm.broadcast(sliced if rank == CLIENT else torch.zeros_like(sliced), CLIENT)
        # 5. an intermediate activation decrypted to everyone: no plaintext travels, both learn it
        hidden.get_plain_text()
    leaky.save(out / f"leaky-party{rank}.pt")
    return {"logits": revealed.tolist() if rank == CLIENT else None}


def private_inference_tapped(
    rank: int, out_dir: str, preset: str, combos: list, ids: list, mask: list, seed: int, calibration: dict | None = None
) -> dict:
    """Private inference on ``preset`` (the owner builds it from the seed, with the LayerNorm
    ``calibration`` record if given) once per combo, each combo's traffic recorded apart
    (``<combo>-party<rank>.pt``)."""
    from mpcformer.models.presets import load_preset
    from mpcformer.models.surgery import CALIBRATION_KEY
    from mpcformer.inference.protocol import run_private_inference
    from leak_tap import LeakTap

    model = None
    if rank == OWNER:
        model, _ = load_preset(preset, num_labels=2, seed=seed)
        model.eval()
        if calibration:
            setattr(model.config, CALIBRATION_KEY, calibration)
    results = {}
    for combo in combos:
        with LeakTap(rank) as tap:
            result = run_private_inference(
                rank,
                model=model,
                input_ids=torch.tensor(ids) if rank == CLIENT else None,
                attention_mask=torch.tensor(mask) if rank == CLIENT else None,
                combo=combo,
            )
        tap.save(Path(out_dir) / f"{combo}-party{rank}.pt")
        results[combo] = {"logits": result.get("logits"), "transfers": len(tap.transfers)}
    return results


def private_inference_batches_tapped(
    rank: int, out_dir: str, preset: str, combos: list, batches: list, seed: int, stock_reveal: bool = False
) -> dict:
    """Private inference on ``preset`` for each combo and each ``(ids, mask)`` batch, each run's
    traffic and held buffers recorded apart (``<combo>-<batch index>-party<rank>.pt``). With
    ``stock_reveal`` the logits are opened with CrypTen's ``get_plain_text(dst=client)`` instead
    (the positive control). Returns the client's decrypted logits (``None`` on the owner)."""
    from mpcformer.inference import protocol as private_inference
    from mpcformer.models.presets import load_preset
    from leak_tap import LeakTap

    if stock_reveal:
        private_inference.reveal_to = lambda x, dst: x.get_plain_text(dst=dst)
    model = None
    if rank == OWNER:
        model, _ = load_preset(preset, num_labels=2, seed=seed)
        model.eval()
    results: dict = {}
    for combo in combos:
        results[combo] = []
        for index, (ids, mask) in enumerate(batches):
            with LeakTap(rank) as tap:
                result = private_inference.run_private_inference(
                    rank, model=model, input_ids=torch.tensor(ids) if rank == CLIENT else None,
                    attention_mask=torch.tensor(mask) if rank == CLIENT else None, combo=combo,
                )
            tap.save(Path(out_dir) / f"{combo}-{index}-party{rank}.pt")
            results[combo].append(result.get("logits"))
    return results
