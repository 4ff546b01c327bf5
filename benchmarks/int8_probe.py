"""Would 8-bit integer GEMMs (VNNI / AMX through oneDNN) beat torch's int64 GEMM for ring matmuls here?

    python benchmarks/int8_probe.py --json runs/bench/int8_probe.json

An exact mod-2^64 product from int8 GEMMs: write each int64 as 8 bytes, shifted to signed digits
``s_i = byte_i - 128`` (so ``x = Σ s_i·2^(8i) + C`` with ``C = 0x8080...80``). Then

    x @ y ≡ Σ_{s<8} 2^(8s) · Σ_{i+j=s} S_i @ T_j  +  C·(rowsum x + colsum y) - k·C²   (mod 2^64)

and each inner sum is *one* GEMM over the concatenated digits, ``[S_0 .. S_s] @ [T_s; ..; T_0]``,
whose int32 accumulator cannot overflow for ``8·k·2^14 < 2^31`` (k ≤ 16,384). That is 8 GEMM
calls and 36 digit products' worth of work, against 1 int64 GEMM. The probe checks the result is
bit-exact and times both; it is an experiment, not a kernel the library uses (on the development
machine it loses, see docs/benchmarks.md), kept outside the package so the question can be
re-asked on other CPUs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mpcformer.bench.matmul import best_times, random_ring

__all__ = ["int8_ring_matmul", "probe"]

_OFFSET = 0x8080808080808080 - (1 << 64)  # C as a signed int64: byte_i ^ 0x80 read as int8 = byte_i - 128
MAX_INNER_DIM = 1 << 14  # 8 digit products of at most 2^14 each, k of them, must stay below 2^31


def _digits_by_row(x: torch.Tensor) -> torch.Tensor:
    """(m, k) int64 -> (m, 8k) int8 ``[S_0 .. S_7]`` (little-endian bytes, least significant first)."""
    m, k = x.shape
    return (x ^ _OFFSET).view(torch.int8).view(m, k, 8).permute(0, 2, 1).contiguous().view(m, 8 * k)


def _digits_by_col_reversed(y: torch.Tensor) -> torch.Tensor:
    """(k, n) int64 -> (8k, n) int8 ``[T_7; ..; T_0]``, so ``[T_s; ..; T_0]`` is a contiguous tail."""
    k, n = y.shape
    return (y ^ _OFFSET).view(torch.int8).view(k, n, 8).permute(2, 0, 1).flip(0).contiguous().view(8 * k, n)


def int8_ring_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y`` mod 2^64 for 2-D int64 CPU tensors, from 8 int8 GEMMs (``torch._int_mm``)."""
    (m, k), n = x.shape, y.shape[1]
    if k > MAX_INNER_DIM:
        raise ValueError(f"inner dimension {k} > {MAX_INNER_DIM}: the int32 accumulator could overflow")
    rows, cols = _digits_by_row(x), _digits_by_col_reversed(y)
    out = torch.zeros(m, n, dtype=torch.int64)
    for s in range(8):
        partial = torch._int_mm(rows[:, : (s + 1) * k].contiguous(), cols[(7 - s) * k :])
        out += partial.to(torch.int64) << (8 * s)
    offset = torch.tensor(_OFFSET, dtype=torch.int64)
    out += offset * (x.sum(1, keepdim=True) + y.sum(0, keepdim=True)) - k * offset * offset
    return out


SHAPES = {"ffn-in": (128, 768, 3072), "ffn-out": (128, 3072, 768), "qkv/out": (128, 768, 768)}


def probe(repeats: int = 5, threads: int = 1) -> dict:
    """Bit-exactness and best-of-``repeats`` times of int64 GEMM vs int8 digits on BERT-base shapes."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, (m, k, n) in SHAPES.items():
        x, y = random_ring([m, k], gen), random_ring([k, n], gen)
        digits_x, digits_y = _digits_by_row(x), _digits_by_col_reversed(y)
        seconds = best_times({
            "int64_gemm": lambda: x @ y,
            "int8_digits": lambda: int8_ring_matmul(x, y),
            "digit_split": lambda: (_digits_by_row(x), _digits_by_col_reversed(y)),
            "one_int8_gemm": lambda: torch._int_mm(digits_x[:, :k].contiguous(), digits_y[7 * k :]),
        }, repeats)
        rows.append({
            "shape": name, "m": m, "k": k, "n": n,
            "bit_exact": bool(torch.equal(int8_ring_matmul(x, y), x @ y)),
            **{f"{kernel}_ms": 1e3 * s for kernel, s in seconds.items()},
        })
    return {"threads": threads, "repeats": repeats, "torch": torch.__version__, "shapes": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    report = probe(args.repeats, args.threads)
    print(f"{'shape':<10}{'int64 GEMM':>12}{'int8 digits':>13}{'ratio':>8}{'digit split':>13}{'1 int8 GEMM':>13}  exact")
    for r in report["shapes"]:
        print(f"{r['shape']:<10}{r['int64_gemm_ms']:>10.1f}ms{r['int8_digits_ms']:>11.1f}ms"
              f"{r['int64_gemm_ms'] / r['int8_digits_ms']:>7.2f}x{r['digit_split_ms']:>11.1f}ms"
              f"{r['one_int8_gemm_ms']:>11.2f}ms  {r['bit_exact']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
