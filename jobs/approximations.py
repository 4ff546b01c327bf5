"""approximations: list the registered MPC-friendly approximations (name, kind, formula, params,
rounds per call under MPC, reference).

    mpcformer approximations                 # a table
    mpcformer approximations --kind normaliser --json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_arguments", "run", "rows", "format_table"]

_COLUMNS = ("name", "kind", "formula", "params", "rounds", "reference")
#: printed under the table
ROUNDS_NOTE = (
    "rounds: communication rounds of one call under MPC at the default parameters and MPC settings "
    "(normalisers: rows of {keys} keys), measured (mpcformer.approx.rounds)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("activation", "normaliser", "layernorm"), help="only this kind")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def rows(kind: str | None = None) -> list[dict[str, Any]]:
    """One dict per registered approximation: name, kind, formula, params (defaults), rounds (one call
    at the defaults, measured; None if not recorded), reference."""
    from mpcformer.approx import list_approximations
    from mpcformer.approx.rounds import recorded

    return [
        {
            "name": a.name, "kind": a.kind, "formula": a.formula, "params": dict(a.params),
            "rounds": recorded(a.name), "reference": a.reference,
        }
        for a in list_approximations(kind)  # type: ignore[arg-type]
    ]


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}={val:g}" for key, val in value.items()) or "-"
    return "-" if value is None else str(value) or "-"


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text table with one header line, a rule, and one line per record."""
    cells = [[_cell(record[col]) for col in _COLUMNS] for record in records]
    widths = [max(len(col), *(len(row[i]) for row in cells)) for i, col in enumerate(_COLUMNS)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(_COLUMNS, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    records = rows(args.kind)
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        from mpcformer.approx.rounds import REFERENCE_KEYS

        print(format_table(records) + "\n\n" + ROUNDS_NOTE.format(keys=REFERENCE_KEYS))
    return 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.approximations"))
