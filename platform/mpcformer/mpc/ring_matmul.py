"""Exact ring (mod 2^64) matmul for CrypTen's CPU int64 shares, and the hook that plugs it in.

**Maths.** CrypTen's CUDA path (``crypten/cuda/cuda_tensor.py``) multiplies 64-bit ring elements
by splitting them into small blocks multiplied in floating point. :func:`ring_matmul` does the same
on the CPU with float64 BLAS. Every int64 ``x`` is written as three *balanced* limbs

    x ≡ d0 + d1·2^22 + d2·2^43  (mod 2^64),   |d0| ≤ 2^21, |d1| ≤ 2^20, |d2| ≤ 2^20,

so ``a @ b ≡ S00 + (S01 + S10)·2^22 + (S02 + S20)·2^43 + S11·2^44 (mod 2^64)`` with
``Sij = A_i @ B_j`` (pairs whose shift reaches 2^64 vanish: 6 of the 9 products are needed).
Every product of limbs is at most 2^42 in magnitude, so any sum of up to 2^53 / 2^42 = 2048 of
them is an exact float64 integer, whatever order BLAS adds them in; longer inner dimensions are cut
into chunks of at most 2048 whose int64 results are added with wrap-around. The two cross sums
``S01 + S10`` and ``S02 + S20`` are each one BLAS call over the concatenated limbs
(``[A1 A0] @ [B0; B1]``), so a chunk costs 4 GEMM calls (6 GEMMs' worth of flops).

**Speed.** Whether 6 float64 GEMMs beat one int64 GEMM depends on the machine: torch >= 2 has a
vectorised int64 GEMM, only ~3-4x slower than MKL's float64 one on an AVX-512 CPU. The CrypTen hook
therefore picks the kernel by a one-time measurement (``MPCConfig.matmul_kernel="auto"``, see
:func:`active_kernel`).

**Hook.** With ``MPCConfig.fast_matmul`` the session's runtime (patch ``ring_matmul`` of
:mod:`mpcformer.mpc.runtime`, in the parties and the dealer) puts :data:`TORCH_WITH_RING_MATMUL` in
place of ``torch`` inside CrypTen's MPC modules (arithmetic, beaver, replicated, TTP and TFP
providers): a stand-in whose ``matmul`` routes CPU int64 tensors to the chosen kernel; every other
attribute is torch's own, and CUDA tensors (``CUDALongTensor``) go to ``torch.matmul``. Results
stay bit-identical to CrypTen's. The Beaver step around the matmul (2 local matmuls instead of 3)
is :mod:`mpcformer.mpc.beaver`'s.

Configuration: ``MPCConfig.matmul_kernel`` (``auto`` | ``limbs`` | ``stock``).
"""

from __future__ import annotations

import logging
import math
import time
import types
from typing import Any, Callable, Literal

import torch

__all__ = [
    "RingKernel", "ring_matmul", "ring_linear", "measure_kernels", "active_kernel", "TORCH_WITH_RING_MATMUL",
]

log = logging.getLogger(__name__)

RingKernel = Literal["auto", "limbs", "stock"]
_STOCK_MATMUL = torch.matmul  # kept before any patching

# -- limb arithmetic -------------------------------------------------------------------------

_SHIFT1, _SHIFT2 = 22, 43  # limb i starts at bit _SHIFT_i; widths 22, 21, 21
_HALF0, _HALF1 = 1 << 21, 1 << 20  # half the range of limbs 0 and 1
_LOW_OFFSET = _HALF0 + (_HALF1 << _SHIFT1)  # lifts limbs 0 and 1 to unsigned
_TOP_BITS = _LOW_OFFSET  # the top bit of limbs 0 and 1 (the same two bits)
_MAX_LIMB_PRODUCT_BITS = 42  # |d0·d0| ≤ 2^21·2^21; every other needed pair is smaller
#: Longest inner dimension one float64 GEMM may sum exactly: 2^53 / 2^42.
MAX_EXACT_CHUNK = 1 << (53 - _MAX_LIMB_PRODUCT_BITS)


def _write_limbs(x: torch.Tensor, d0: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> None:
    """Write the balanced float64 limbs of int64 ``x`` into ``d0, d1, d2`` (views of x's shape).

    ``y = x + 2^21 + 2^20·2^22`` (wrapping) makes the two low limbs unsigned, ``u0 = y[0:22]``,
    ``u1 = y[22:43]``; ``u - 2^(w-1)`` is the sign-extension of ``u`` with its top bit flipped, so
    with ``z = y ^ (2^21 | 2^42)``: ``d0 = (z << 42) >> 42``, ``d1 = (z << 21) >> 43`` and
    ``d2 = z >> 43`` (arithmetic shifts; d2 is the top 21 bits read as signed, right modulo 2^64
    once scaled by 2^43). Seven passes over ``x``, the last shift of each writing float64.
    """
    z = x + _LOW_OFFSET
    z ^= _TOP_BITS
    bits = torch.bitwise_left_shift(z, 64 - _SHIFT1)  # the one scratch tensor
    torch.bitwise_right_shift(bits, 64 - _SHIFT1, out=d0)
    torch.bitwise_left_shift(z, 64 - _SHIFT2, out=bits)
    torch.bitwise_right_shift(bits, 64 - _SHIFT2 + _SHIFT1, out=d1)
    torch.bitwise_right_shift(z, _SHIFT2, out=d2)


def _chunk_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` mod 2^64 for ``a (..., M, k)``, ``b (..., k, N)`` with ``k ≤ MAX_EXACT_CHUNK``.

    Limbs are laid out so that each needed sum is one GEMM over a contiguous slice:
    ``A = [A1 A0 A2]`` along k and ``B = [B2; B0; B1]`` along k, then
    ``S00 = A0 @ B0``, ``S11 = A1 @ B1``, ``S01 + S10 = [A1 A0] @ [B0; B1]``,
    ``S02 + S20 = [A0 A2] @ [B2; B0]``.
    """
    k = a.shape[-1]
    a_limbs = torch.empty(*a.shape[:-1], 3 * k, dtype=torch.float64)  # (..., M, 3k): [A1 A0 A2]
    b_limbs = torch.empty(*b.shape[:-2], 3 * k, b.shape[-1], dtype=torch.float64)  # (..., 3k, N): [B2; B0; B1]
    _write_limbs(a, a_limbs[..., k:2 * k], a_limbs[..., :k], a_limbs[..., 2 * k:])
    _write_limbs(b, b_limbs[..., k:2 * k, :], b_limbs[..., 2 * k:, :], b_limbs[..., :k, :])
    terms = (  # (float64 (..., M, N) exact integer sum, shift)
        (torch.matmul(a_limbs[..., k:2 * k], b_limbs[..., k:2 * k, :]), 0),  # S00
        (torch.matmul(a_limbs[..., :2 * k], b_limbs[..., k:, :]), _SHIFT1),  # S10 + S01
        (torch.matmul(a_limbs[..., k:], b_limbs[..., :2 * k, :]), _SHIFT2),  # S02 + S20
        (torch.matmul(a_limbs[..., :k], b_limbs[..., 2 * k:, :]), 2 * _SHIFT1),  # S11
    )
    out = terms[0][0].to(torch.int64)
    for total, shift in terms[1:]:
        part = total.to(torch.int64)
        part <<= shift  # wraps modulo 2^64
        out += part
    return out


def ring_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(a, b)`` for int64 CPU tensors, modulo 2^64, computed with float64 BLAS.

    Bit-identical to torch's int64 matmul (which wraps) for every input, ``-2^63`` and ``2^63-1``
    included. Same shape rules as ``torch.matmul``: 1-D operands, and broadcasting batch dims such
    as attention's ``(B, H, T, d) @ (B, H, d, T)``. Inner dimensions above
    :data:`MAX_EXACT_CHUNK` are summed chunk by chunk.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.device.type != "cpu":
            got = f"{t.dtype} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"ring_matmul needs int64 CPU tensors, {name} is {got}; use torch.matmul otherwise")
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError("ring_matmul needs at least 1-D operands (as torch.matmul does)")
    squeeze = [d for d, vector in ((-2, a.dim() == 1), (-1, b.dim() == 1)) if vector]
    a2 = a.unsqueeze(0) if a.dim() == 1 else a  # (..., M, K)
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b  # (..., K, N)
    k = a2.shape[-1]
    if k != b2.shape[-2]:
        raise ValueError(f"ring_matmul: inner dimensions differ, a is {tuple(a.shape)} and b is {tuple(b.shape)}")
    if k == 0 or a2.numel() == 0 or b2.numel() == 0:
        out = torch.matmul(a2, b2)  # empty or all-zero: nothing to split
    else:
        n_chunks = math.ceil(k / MAX_EXACT_CHUNK)
        step = math.ceil(k / n_chunks)
        out = _chunk_product(a2[..., :step], b2[..., :step, :])
        for start in range(step, k, step):
            out += _chunk_product(a2[..., start:start + step], b2[..., start:start + step, :])
    for dim in squeeze:
        out = out.squeeze(dim)
    return out


def ring_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.linear`` on the ring: ``x @ weight.T + bias`` mod 2^64.

    ``x (..., in)``, ``weight (out, in)``, ``bias (out,)`` int64 CPU tensors (CrypTen's ``Linear``
    computes ``x.matmul(weight.t())``, which the hook already covers).
    """
    out = ring_matmul(x, weight.transpose(-2, -1))  # (..., in) @ (in, out) -> (..., out)
    return out + bias if bias is not None else out


# -- kernel choice ---------------------------------------------------------------------------

#: Products smaller than this many multiply-adds always take torch's int64 GEMM (call overhead).
MIN_LIMB_MACS = 1 << 22


def _random_ring(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, shape, dtype=torch.int64, generator=generator)


def measure_kernels(m: int = 64, k: int = 768, n: int = 768, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds of ``stock`` (torch int64) and ``limbs`` on ``(m,k) @ (k,n)``."""
    gen = torch.Generator().manual_seed(0)
    a, b = _random_ring((m, k), gen), _random_ring((k, n), gen)
    kernels: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "stock": _STOCK_MATMUL, "limbs": ring_matmul,
    }
    best = {name: math.inf for name in kernels}
    for fn in kernels.values():
        fn(a, b)  # warm-up
    for _ in range(repeats):
        for name, fn in kernels.items():  # interleaved, so background load hits both alike
            start = time.perf_counter()
            fn(a, b)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


# -- the CrypTen hook --------------------------------------------------------------------------

#: The "auto" kernel's choice, measured once per process: ``limbs`` or ``stock``.
_measured: dict[str, str] = {}


def _configured_kernel() -> str | None:
    """The session's ``matmul_kernel`` while the runtime's ring matmul hook is on, else ``None``."""
    from mpcformer.mpc import runtime

    if not runtime.applied("ring_matmul"):
        return None
    return runtime.active_config().matmul_kernel


def active_kernel() -> str:
    """The kernel encrypted CPU matmuls use now: ``limbs`` or ``stock`` (measures once under auto)."""
    kernel = _configured_kernel()
    if kernel is None:
        return "stock"
    if kernel != "auto":
        return kernel
    if "auto" not in _measured:
        times = measure_kernels()
        _measured["auto"] = "limbs" if times["limbs"] < 0.9 * times["stock"] else "stock"
        log.info(
            "ring matmul: stock int64 %.1f ms, float64 limbs %.1f ms on 64x768x768 -> using %s",
            1e3 * times["stock"], 1e3 * times["limbs"], _measured["auto"],
        )
    return _measured["auto"]


def _is_cpu_int64(t: Any) -> bool:
    return type(t) is torch.Tensor and t.dtype == torch.int64 and t.device.type == "cpu"


def _dispatch_matmul(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
    """``torch.matmul`` as CrypTen's modules see it while the hook is on."""
    if args or kwargs or not (_is_cpu_int64(a) and _is_cpu_int64(b)) or a.dim() == 0 or b.dim() == 0:
        return _STOCK_MATMUL(a, b, *args, **kwargs)
    m, n = (a.shape[-2] if a.dim() > 1 else 1), (b.shape[-1] if b.dim() > 1 else 1)
    macs = max(a.numel() * n, b.numel() * m)  # M·K·N times the larger operand's batch
    if macs >= MIN_LIMB_MACS and active_kernel() == "limbs":
        return ring_matmul(a, b)
    return _STOCK_MATMUL(a, b)


class _TorchWithRingMatmul(types.ModuleType):
    """Stands in for ``torch`` in CrypTen's MPC modules: ``matmul`` dispatches, the rest is torch."""

    matmul = staticmethod(_dispatch_matmul)

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


#: What CrypTen's MPC modules see as ``torch`` while the hook is on.
TORCH_WITH_RING_MATMUL = _TorchWithRingMatmul()
