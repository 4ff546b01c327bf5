"""Micro-benchmark of the ring (mod 2^64) matmul: torch's int64 GEMM vs float64 limbs, in one run.

Two parts, both on BERT-base shapes:

* **kernels** (:func:`bench_kernels`): ``torch.matmul`` on int64 ("stock") against
  :func:`~mpcformer.mpc.ring_matmul.ring_matmul` ("limbs"), best of ``repeats`` interleaved runs,
  bit-exactness checked; ``f64_gemm_ms`` is one float64 GEMM of the same shape, the unit the limb
  kernel needs 6 of (so limbs can only win where stock is more than ~6x slower than float64).
* **encrypted** (:func:`bench_encrypted`): one 2-party + dealer run (:func:`run_local`) timing
  private x private matmuls with the hook off (CrypTen as shipped) and on with each kernel; the
  revealed products (integers at precision 0) must be identical in every mode.

    python -m mpcformer.bench.matmul --repeats 3 --json runs/bench/matmul.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform as std_platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import Field, PositiveInt

from mpcformer.config import StrictModel

__all__ = ["MatmulShape", "MatmulBenchConfig", "bench_kernels", "bench_encrypted", "run_matmul_bench", "render_table", "main"]

log = logging.getLogger(__name__)


class MatmulShape(StrictModel):
    """One product ``(..., M, K) @ (..., K, N)``."""

    name: str
    a: list[PositiveInt] = Field(min_length=2)
    b: list[PositiveInt] = Field(min_length=2)


BERT_BASE_SHAPES = [
    MatmulShape(name="ffn-in 128x768 @ 768x3072", a=[128, 768], b=[768, 3072]),
    MatmulShape(name="ffn-out 128x3072 @ 3072x768", a=[128, 3072], b=[3072, 768]),
    MatmulShape(name="qkv/out 128x768 @ 768x768", a=[128, 768], b=[768, 768]),
    MatmulShape(name="attention 12x128x64 @ 12x64x128", a=[12, 128, 64], b=[12, 64, 128]),
]


class MatmulBenchConfig(StrictModel):
    shapes: list[MatmulShape] = Field(default_factory=lambda: list(BERT_BASE_SHAPES), min_length=1)
    repeats: int = Field(default=3, ge=1, le=20, description="timed runs per kernel (best kept)")
    threads: int = Field(default=1, ge=1, le=256, description="torch threads (run_local gives parties 1 on 2 cores)")
    encrypted: bool = Field(default=True, description="also time encrypted matmuls under run_local")
    encrypted_repeats: int = Field(default=2, ge=1, le=10)
    seed: int = 0


def random_ring(shape: list[int], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, tuple(shape), dtype=torch.int64, generator=gen)


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best seconds per function over ``repeats`` rounds, interleaved so load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_kernels(config: MatmulBenchConfig) -> list[dict]:
    """Time stock int64, float64 limbs and one float64 GEMM per shape; check limbs is bit-exact."""
    from mpcformer.mpc.ring_matmul import ring_matmul

    gen = torch.Generator().manual_seed(config.seed)
    rows = []
    for shape in config.shapes:
        a, b = random_ring(shape.a, gen), random_ring(shape.b, gen)
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
        times = best_times(
            {"stock": lambda: torch.matmul(a, b), "limbs": lambda: ring_matmul(a, b),
             "f64_gemm": lambda: torch.matmul(a64, b64)},
            config.repeats,
        )
        rows.append({
            "shape": shape.name,
            "stock_ms": 1e3 * times["stock"], "limbs_ms": 1e3 * times["limbs"],
            "f64_gemm_ms": 1e3 * times["f64_gemm"],
            "speedup": times["stock"] / times["limbs"],
            "bit_exact": bool(torch.equal(ring_matmul(a, b), torch.matmul(a, b))),
        })
        log.info("%s: stock %.1f ms, limbs %.1f ms", shape.name, rows[-1]["stock_ms"], rows[-1]["limbs_ms"])
    return rows


#: Hook settings the encrypted part compares: name -> MPCConfig.matmul_kernel, None = hook off.
ENCRYPTED_MODES: dict[str, str | None] = {"crypten": None, "hook+stock": "stock", "hook+limbs": "limbs", "hook+auto": "auto"}


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _ring_hook(session_runtime: Any, kernel: str | None) -> Any:
    """The session's patches with the ring matmul kernel switched; ``None``: ``fast_matmul`` off
    (CrypTen's matmul and its 3-product Beaver step)."""
    hook = {"fast_matmul": False} if kernel is None else {"matmul_kernel": kernel}
    return session_runtime.switched(**hook)


def encrypted_matmul_party(rank: int, shapes: list[dict], repeats: int, seed: int) -> dict:
    """One party's timings of ``x.matmul(w)`` (x from party 0, w from party 1) per shape and mode.

    The dealer runs with the hook on (``kernel="auto"``) in every mode: only the parties switch.
    """
    from mpcformer.mpc import ring_matmul as rm
    from mpcformer.mpc import runtime
    from mpcformer.mpc.compat import crypten

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    out: dict = {"times": {}, "products": {}, "auto_kernel": None}
    for shape in shapes:
        x_plain, w_plain = random_ring(shape["a"], gen), random_ring(shape["b"], gen)
        x = crypten.cryptensor(x_plain, src=0, precision=0)  # integers: the product is a ring element
        w = crypten.cryptensor(w_plain, src=1, precision=0)
        x.matmul(w)  # warm-up (the dealer measures its kernels at its first large product)
        times = {mode: float("inf") for mode in ENCRYPTED_MODES}
        digests = {"plaintext": _digest(torch.matmul(x_plain, w_plain))}
        for _ in range(repeats):
            for mode, kernel in ENCRYPTED_MODES.items():  # interleaved, so load hits all modes alike
                with _ring_hook(runtime.active(), kernel):
                    start = time.perf_counter()
                    z = x.matmul(w)
                    times[mode] = min(times[mode], time.perf_counter() - start)
                    digests[mode] = _digest(z.get_plain_text())
                    if kernel == "auto":
                        out["auto_kernel"] = rm.active_kernel()
        out["times"][shape["name"]], out["products"][shape["name"]] = times, digests
    return out


def bench_encrypted(config: MatmulBenchConfig) -> list[dict]:
    """Encrypted matmul timings per shape and hook mode (party 0's, best of repeats), one run."""
    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.launcher import run_local

    shapes = [s.model_dump() for s in config.shapes]
    results = run_local(
        encrypted_matmul_party, args=(shapes, config.encrypted_repeats, config.seed),
        config=MPCConfig(fast_matmul=True), timeout_s=1800,
    )
    rows = []
    for shape in config.shapes:
        times = results[0]["times"][shape.name]
        digests = {r["products"][shape.name][m] for r in results for m in (*ENCRYPTED_MODES, "plaintext")}
        rows.append({
            "shape": shape.name, **{f"{mode}_s": t for mode, t in times.items()},
            "speedup": times["crypten"] / times["hook+auto"],  # what MPCConfig.fast_matmul buys
            "bit_exact": len(digests) == 1,
            "auto_kernel": results[0]["auto_kernel"],
        })
    return rows


def run_matmul_bench(config: MatmulBenchConfig) -> dict:
    """Both parts; returns the report written as JSON by :func:`main`."""
    torch.set_num_threads(config.threads)
    report = {
        "settings": config.model_dump(mode="json"),
        "machine": {"cpu": std_platform.processor() or std_platform.machine(),
                    "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()},
        "kernels": bench_kernels(config),
    }
    if config.encrypted:
        report["encrypted"] = bench_encrypted(config)
    return report


def render_table(report: dict) -> str:
    """Plain-text tables of a report."""
    lines = [f"{'kernel (ms)':34s} {'stock':>9s} {'limbs':>9s} {'speed-up':>9s} {'1 f64 GEMM':>11s} exact"]
    for r in report["kernels"]:
        lines.append(f"{r['shape']:34s} {r['stock_ms']:9.1f} {r['limbs_ms']:9.1f} {r['speedup']:8.2f}x "
                     f"{r['f64_gemm_ms']:11.1f} {r['bit_exact']}")
    if "encrypted" in report:
        modes = list(ENCRYPTED_MODES)
        lines += ["", f"{'encrypted x@w, party 0 (s)':34s} " + " ".join(f"{m:>11s}" for m in modes) + "  auto/crypten exact auto-kernel"]
        for r in report["encrypted"]:
            cells = " ".join(f"{r[f'{m}_s']:11.3f}" for m in modes)
            lines.append(f"{r['shape']:34s} {cells} {r['speedup']:8.2f}x {r['bit_exact']} {r['auto_kernel']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpcformer.bench.matmul", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per kernel (best kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the kernel part")
    parser.add_argument("--no-encrypted", action="store_true", help="skip the 2-party encrypted part")
    parser.add_argument("--json", type=Path, default=Path("runs/bench/matmul.json"), help="report path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = MatmulBenchConfig(repeats=args.repeats, threads=args.threads, encrypted=not args.no_encrypted)
    report = run_matmul_bench(config)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(render_table(report))
    print(f"\nwrote {args.json}")
    return 0 if all(r["bit_exact"] for part in ("kernels", "encrypted") for r in report.get(part, [])) else 1


if __name__ == "__main__":
    sys.exit(main())
