"""How often CrypTen's probabilistic truncation corrupts an element, at the magnitudes real models
produce: per element and per sequence, one encrypted forward per sequence.

    python -m mpcformer.bench.truncation --model minilm --seq-len 128 --approx quad+2quad \\
        --sentences ../shared/data/sst2/dev.tsv --sequences 4

CrypTen divides a 2-party share by a public integer ``y`` (the truncation after every fixed-point
product) locally; the result is off by ``2^64 / y`` with probability ``|x| / 2^64``, ``x`` the
encoded value before the division. Here every such division is recorded: party 1 sends its share
before and after it to party 0 over a **measurement-only channel** (plain ``torch.distributed``,
outside CrypTen's counters; it shows the client's data to the owner, so this is a measurement,
never a deployment, and not a party operation: party actors refuse it). Party 0 adds up ``p = |x| / 2^64`` (the expected number of corrupted
elements), ``1 - Π(1 - p)`` (the probability that a sequence has at least one), and checks each
result against ``⌊x / y⌋``: the failures actually seen. ``--exact`` runs the same forward with
exact truncation (:mod:`mpcformer.mpc.truncation`), which should show none.

Inputs are real sentences packed to the full length (``--sentences``, any GLUE-style table) or
random token ids. Writes ``truncation.json`` and ``truncation.md`` into ``--out``.

    python -m mpcformer.bench.truncation --model bert-base --seq-len 128 --latency-rounds 2

times the benchmark's forward with exact truncation off and on instead, alternating (``truncation-latency.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path
from typing import Any, Iterator

import torch

from mpcformer.bench.report import write_json_and_markdown

__all__ = [
    "measure_truncation", "measure_latency", "truncation_party", "recording", "pack_sentences", "render_markdown",
    "render_latency",
]

_TWO_64 = 2.0**64


class _Recorder:
    """Party 0's tallies of every division of shares by a public integer (see the module doc)."""

    def __init__(self, rank: int, ledger: Any):
        self.rank, self.ledger = rank, ledger
        self.reset()

    def reset(self) -> None:
        self.calls = self.elements = self.failures = 0
        self.expected = 0.0  # Σ p
        self.log_none = 0.0  # Σ log(1 - p)
        self.max_abs = 0
        self.max_small_error = 0  # largest |result - ⌊x/y⌋| among elements that did not fail
        self.by_category: dict[str, float] = {}
        self.by_divisor: dict[str, int] = {}
        self.log2_histogram = torch.zeros(65, dtype=torch.float64)  # Σ p per bit length of |x|

    def _gather(self, share: torch.Tensor) -> torch.Tensor | None:
        """Party 0: the value ``x_0 + x_1`` (mod 2^64); party 1 sends its share."""
        import torch.distributed as dist

        if self.rank == 1:
            dist.send(share.contiguous(), dst=0)
            return None
        other = torch.empty_like(share).contiguous()
        dist.recv(other, src=1)
        return share + other

    def record(self, x: torch.Tensor, z: torch.Tensor, y: int | torch.Tensor) -> None:
        if torch.is_tensor(y):
            y = torch.broadcast_to(y, x.size()).reshape(-1)
        x, z = x.reshape(-1), z.reshape(-1)
        magnitude = x.double().abs()
        p = magnitude / _TWO_64
        off = z - torch.div(x, y, rounding_mode="floor")
        wrong_by = 2.0**64 / (y.abs().double() if torch.is_tensor(y) else abs(y))  # what a wrap costs
        failed = off.abs().double() > torch.clamp(torch.as_tensor(wrong_by / 2), min=2.0)
        self.calls += 1
        self.elements += x.numel()
        self.failures += int(failed.sum())
        self.expected += float(p.sum())
        self.log_none += float(torch.log1p(-p).sum())
        if x.numel():
            self.max_abs = max(self.max_abs, int(magnitude.max()))
        if (~failed).any():
            self.max_small_error = max(self.max_small_error, int(off[~failed].abs().max()))
        category = self.ledger._stack[-1][0] if self.ledger._stack else "other"
        self.by_category[category] = self.by_category.get(category, 0.0) + float(p.sum())
        divisor = "tensor" if torch.is_tensor(y) else str(y)
        self.by_divisor[divisor] = self.by_divisor.get(divisor, 0) + x.numel()
        bits = torch.frexp(magnitude)[1].clamp(0, 64)  # bit length of |x|
        self.log2_histogram += torch.zeros(65, dtype=torch.float64).index_add_(0, bits.long(), p)

    def wrap(self, inner: Any) -> Any:
        def recording_div_(shares: Any, y: Any) -> Any:
            if isinstance(y, float) and int(y) == y:
                y = int(y)
            if torch.is_tensor(y) and not (y.is_floating_point() and y.frac().ne(0).any()):
                y = y.long()  # integers, as CrypTen reads them
            if not isinstance(y, int) and not (torch.is_tensor(y) and not y.is_floating_point()):
                return inner(shares, y)  # public float: a product then a truncation (recorded inside)
            before = self._gather(shares.share)
            result = inner(shares, y)
            after = self._gather(result.share)
            if self.rank == 0:
                self.record(before, after, y)
            return result

        return recording_div_

    def summary(self) -> dict[str, Any]:
        return {
            "divisions": self.calls,
            "elements": self.elements,
            "expected_corrupted": self.expected,
            "p_sequence_corrupted": -math.expm1(self.log_none),
            "failures_seen": self.failures,
            "max_log2_abs_x": math.log2(self.max_abs) if self.max_abs else 0.0,
            "max_error_otherwise": self.max_small_error,
            "expected_by_category": self.by_category,
            "elements_by_divisor": self.by_divisor,
            "expected_by_log2_abs_x": {str(b): v for b, v in enumerate(self.log2_histogram.tolist()) if v > 0},
        }


@contextlib.contextmanager
def recording(rank: int, ledger: Any) -> Iterator[_Recorder]:
    """Record every division of shares by a public integer while the block runs (both parties call
    it together; the tallies are party 0's; ``ledger``'s open scope names each division's category)."""
    from crypten.mpc.primitives import ArithmeticSharedTensor

    from mpcformer.mpc import runtime

    recorder = _Recorder(rank, ledger)
    with runtime.swapped(ArithmeticSharedTensor, {"div_": recorder.wrap(ArithmeticSharedTensor.div_)}):
        yield recorder


def truncation_party(rank: int, model_name: str, combo: str, sequences: list[list[int]], seed: int) -> list[dict]:
    """One party's side: one encrypted forward per sequence, each division recorded (party 0's tallies)."""
    from mpcformer.models.presets import load_preset_model
    from mpcformer.inference.protocol import run_private_inference
    from mpcformer.mpc.costs import CostLedger

    model = None
    if rank == 0:
        model = load_preset_model(model_name, num_labels=2, seed=seed).eval()
    out = []
    for ids in sequences:
        ledger = CostLedger()
        with recording(rank, ledger) as recorder:
            ids_t = torch.tensor([ids]) if rank == 1 else None
            mask = torch.ones_like(ids_t) if rank == 1 else None
            run_private_inference(rank, model=model, input_ids=ids_t, attention_mask=mask, combo=combo, ledger=ledger)
        out.append(recorder.summary())
    return out


def pack_sentences(path: Path | None, seq_len: int, count: int, seed: int = 0) -> list[list[int]]:
    """``count`` token-id sequences of exactly ``seq_len``: consecutive sentences of the table at
    ``path`` packed together (``[CLS] ... [SEP]``), or random ids without one."""
    from transformers import AutoTokenizer

    from mpcformer.models.presets import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    if path is None:
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(1000, tokenizer.vocab_size, (count, seq_len), generator=gen).tolist()
    from mpcformer.data.loading import read_table

    columns = read_table(path)
    text_column = next(values for values in columns.values() if values and isinstance(values[0], str))
    sequences, pending, tokens = [], [], 0
    for sentence in text_column:
        pending.append(sentence)
        tokens += len(tokenizer.tokenize(sentence))
        if tokens >= seq_len:
            encoded = tokenizer(" ".join(pending), truncation=True, max_length=seq_len)["input_ids"]
            sequences.append(encoded)
            pending, tokens = [], 0
            if len(sequences) == count:
                return sequences
    raise ValueError(f"{path} holds too little text for {count} sequences of {seq_len} tokens")


def measure_truncation(
    model: str, seq_len: int, approx: str, sequences: int, sentences: Path | None, exact: bool = False, seed: int = 0
) -> dict[str, Any]:
    """Run the forwards (2 parties + dealer, local launcher) and return the report."""
    from mpcformer.mpc.config import MPCConfig
    from mpcformer.mpc.launcher import run_local

    ids = pack_sentences(sentences, seq_len, sequences, seed)
    config = MPCConfig(exact_truncation=exact)
    per_sequence = run_local(truncation_party, args=(model, approx, ids, seed), config=config, timeout_s=7200)[0]
    expected = [s["expected_corrupted"] for s in per_sequence]
    elements = [s["elements"] for s in per_sequence]
    return {
        "model": model, "seq_len": seq_len, "approx": approx, "truncation": "exact" if exact else "crypten",
        "inputs": str(sentences) if sentences else "random token ids", "sequences": per_sequence,
        "mean": {
            "elements": sum(elements) / len(elements),
            "expected_corrupted": sum(expected) / len(expected),
            "per_element": sum(expected) / sum(elements),
            "p_sequence_corrupted": sum(s["p_sequence_corrupted"] for s in per_sequence) / len(per_sequence),
            "failures_seen": sum(s["failures_seen"] for s in per_sequence),
        },
    }


def measure_latency(model: str, seq_len: int, approx: str, rounds: int, seed: int = 0) -> dict[str, Any]:
    """The benchmark's forward (:func:`mpcformer.bench.runner.run_combo`) with exact truncation off
    and on, alternating ``rounds`` times; each variant's fastest round and the cost ratio."""
    from mpcformer.bench import paired
    from mpcformer.bench.runner import BenchConfig, run_combo
    from mpcformer.mpc.config import MPCConfig

    def variant(exact: bool):
        cfg = BenchConfig(
            model=model, seq_len=seq_len, approx=[approx], seed=seed, truncation_risk=False,  # latency only
            mpc=MPCConfig(exact_truncation=exact),
        )

        def call() -> tuple[float, dict[str, Any]]:
            costs = run_combo(cfg, approx)
            total = costs["total"]
            return total["time_s"], {"rounds": total["rounds"], "bytes": total["bytes"], "dealer": costs["dealer"]}

        return call

    samples = paired.alternate({"crypten": variant(False), "exact": variant(True)}, rounds)
    best = {name: paired.fastest(runs) for name, runs in samples.items()}
    return {
        "model": model, "seq_len": seq_len, "approx": approx, "rounds": rounds,
        "fastest_s": {name: s.latency_s for name, s in best.items()},
        "cost_ratio": best["exact"].latency_s / best["crypten"].latency_s,
        "spread_between_rounds": {name: paired.spread(runs) for name, runs in samples.items()},
        "samples": paired.as_plain(samples),
    }


def render_latency(report: dict[str, Any]) -> str:
    lines = [
        f"# Exact truncation's cost: {report['model']}, length {report['seq_len']}, {report['approx']}",
        "",
        "| truncation | fastest forward (s) | every round (s) | rounds | MB | dealer MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in report["samples"].items():
        first = runs[0]
        every = ", ".join(f"{r['latency_s']:.2f}" for r in runs)
        lines.append(
            f"| {name} | {report['fastest_s'][name]:.2f} | {every} | "
            f"{first['rounds']:,.0f} | {first['bytes'] / 1e6:,.1f} | {first['dealer']['bytes'] / 1e6:,.1f} |"
        )
    lines += ["", f"Exact / CrypTen's (fastest rounds): {report['cost_ratio']:.2f}x."]
    return "\n".join(lines) + "\n"


def render_markdown(report: dict[str, Any]) -> str:
    m = report["mean"]
    categories: dict[str, float] = {}
    for s in report["sequences"]:
        for k, v in s["expected_by_category"].items():
            categories[k] = categories.get(k, 0.0) + v
    total = sum(categories.values()) or 1.0
    where = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(categories.items(), key=lambda kv: -kv[1])[:4])
    lines = [
        f"# Truncation: {report['model']}, length {report['seq_len']}, {report['approx']}, {report['truncation']}",
        "",
        "| sequences | elements truncated per sequence | expected corrupted per element | expected corrupted per "
        "sequence | P(sequence has one) | failures seen | largest log2 abs(x) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {len(report['sequences'])} | {m['elements']:.3g} | {m['per_element']:.2e} | {m['expected_corrupted']:.2e} | "
        f"{m['p_sequence_corrupted']:.2e} | {m['failures_seen']} | "
        f"{max(s['max_log2_abs_x'] for s in report['sequences']):.1f} |",
        "",
        f"Where the expected corruptions come from: {where}.",
    ]
    if report["truncation"] == "exact":
        lines += ["", "Exact truncation was on: the expected columns are what CrypTen's local division would risk "
                  "on these values; failures seen and the largest error otherwise "
                  f"({max(s['max_error_otherwise'] for s in report['sequences'])} unit) are the exact path's."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="preset (tiny, minilm, bert-base, bert-large)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--approx", default="quad+2quad", help="one approximation combination")
    parser.add_argument("--sequences", type=int, default=2, help="forwards, one sequence each")
    parser.add_argument("--sentences", type=Path, default=None, help="GLUE-style table of sentences (else random ids)")
    parser.add_argument("--exact", action="store_true", help="with exact truncation on")
    parser.add_argument(
        "--latency-rounds", type=int, default=0,
        help="instead: time the benchmark's forward with exact truncation off and on, alternating, this many rounds",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench/truncation"))
    args = parser.parse_args(argv)
    if args.latency_rounds:
        report = measure_latency(args.model, args.seq_len, args.approx, args.latency_rounds)
        write_json_and_markdown(args.out, "truncation-latency", report, render_latency(report))
        return 0
    report = measure_truncation(args.model, args.seq_len, args.approx, args.sequences, args.sentences, args.exact)
    write_json_and_markdown(args.out, "truncation", report, render_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
