"""Party functions for the ring-matmul end-to-end test (module level: spawned processes import them)."""

from __future__ import annotations

import torch


def products_stock_then_fast(rank: int, ints: dict[str, list], floats: dict[str, list]) -> dict:
    """Run the same encrypted products with the hook off, then on with the limb kernel forced.

    Integer inputs are shared at precision 0 (no fixed-point truncation), so every revealed product
    is an exact ring element; ``ring_calls`` counts the products that took :func:`ring_matmul`.
    """
    from mpcformer.mpc import ring_matmul as rm
    from mpcformer.mpc import runtime
    from mpcformer.mpc.compat import crypten

    rm.MIN_LIMB_MACS = 0  # the test shapes are small: send every product through the limbs
    calls = {"n": 0}
    limb_kernel = rm.ring_matmul

    def counted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return limb_kernel(a, b)

    rm.ring_matmul = counted  # the dispatcher looks the kernel up at call time
    results = {}
    for mode in ("stock", "fast"):
        switches = dict(overlap_dealer=False, stream_triples=False, fast_matmul=mode == "fast", matmul_kernel="limbs")
        with runtime.active().switched(**switches):  # "fast": what MPCConfig.fast_matmul turns on
            calls["n"] = 0
            x, w = (crypten.cryptensor(torch.tensor(ints[n]), src=s, precision=0) for n, s in (("x", 0), ("w", 1)))
            q, k = (crypten.cryptensor(torch.tensor(ints[n]), src=0, precision=0) for n in ("q", "k"))
            products = {
                "private": x.matmul(w),  # (M, K) @ (K, N)
                "attention": q.matmul(k.transpose(-2, -1)),  # (B, H, T, d) @ (B, H, d, T)
                "public": x.matmul(torch.tensor(ints["w"])),  # encrypted @ plaintext
            }
            ring_calls = calls["n"]
            xf = crypten.cryptensor(torch.tensor(floats["x"]), src=0)
            wf = crypten.cryptensor(torch.tensor(floats["w"]), src=1)
            results[mode] = {
                **{name: t.get_plain_text().tolist() for name, t in products.items()},
                "float": xf.matmul(wf).get_plain_text().tolist(),
                "ring_calls": ring_calls,
            }
    return results
