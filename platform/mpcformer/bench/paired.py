"""Variants of one encrypted forward measured round-robin in one run, so that their ratio is fair.

On a shared machine absolute times drift with the load; alternating the variants (A, B, A, B, ...)
exposes each to the same drift, and the spread of a variant between rounds says how much of a
difference the run can resolve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Sample:
    """One call of a variant: its measured forward latency (s) and the call's wall time incl. start-up."""

    latency_s: float
    wall_s: float
    detail: dict[str, Any]


def alternate(
    variants: dict[str, Callable[[], tuple[float, dict[str, Any]]]],
    rounds: int,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, list[Sample]]:
    """Call every variant once per round, in order; each returns ``(latency_s, detail)``."""
    samples: dict[str, list[Sample]] = {name: [] for name in variants}
    for round_no in range(rounds):
        for name, call in variants.items():
            tic = time.perf_counter()
            latency_s, detail = call()
            samples[name].append(Sample(latency_s, time.perf_counter() - tic, detail))
            if progress:
                progress(name, round_no)
    return samples


def fastest(samples: list[Sample]) -> Sample:
    """The round with the lowest latency: the least disturbed by other load."""
    return min(samples, key=lambda s: s.latency_s)


def spread(samples: list[Sample]) -> float:
    """How much the same variant's latency moved between rounds (max / min - 1)."""
    values = [s.latency_s for s in samples]
    return max(values) / min(values) - 1.0


def as_plain(samples: dict[str, list[Sample]]) -> dict[str, list[dict[str, Any]]]:
    """JSON-ready copy of ``samples``."""
    return {k: [{"latency_s": s.latency_s, "wall_s": s.wall_s, **s.detail} for s in v] for k, v in samples.items()}
