"""Read the Grafana dashboards in ``dashboards/*.json``: panels, their PromQL, their variables.

The JSON files are the one source of truth (edit them by hand or export from Grafana); this
module only reads them, for the tests (every query evaluated against a real Prometheus) and for
the Kubernetes ConfigMap generator.

    for query in panel_queries(load_dashboard("dashboards/private-inference.json")):
        prom.query(substitute(query.expr, {"job": "sst2-7", "approx": ".*"}))
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = [
    "PanelQuery", "DEFAULT_DASHBOARDS_DIR", "dashboard_files", "load_dashboard", "iter_panels",
    "panel_queries", "variables", "referenced_variables", "substitute", "GRAFANA_INTERVALS",
]

#: ``dashboards/`` of a source checkout (the repository root is four levels above this file).
DEFAULT_DASHBOARDS_DIR = Path(__file__).resolve().parents[3] / "dashboards"

#: Values for Grafana's built-in interval variables when a query runs outside Grafana.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True)
class PanelQuery:
    """One PromQL target of one panel."""

    dashboard: str
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str


def dashboard_files(root: str | Path = DEFAULT_DASHBOARDS_DIR) -> list[Path]:
    """The dashboard JSON files in ``root``, sorted by name."""
    files = sorted(Path(root).glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no Grafana dashboards (*.json) in {root}")
    return files


def load_dashboard(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from iter_panels(panel)


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every Prometheus target of every panel."""
    return [
        PanelQuery(dashboard.get("uid", ""), panel["id"], panel.get("title", ""), target.get("refId", ""), target["expr"])
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's template variables."""
    return list(dashboard.get("templating", {}).get("list", []))


def referenced_variables(text: str) -> set[str]:
    """Names of the variables ``$x``, ``${x}``, ``${x:fmt}`` and ``[[x]]`` used in ``text``."""
    return {next(g for g in match.groups() if g) for match in _VARIABLE.finditer(text)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace template variables in ``expr`` (Grafana's interval variables have defaults)."""
    table = {**GRAFANA_INTERVALS, **values}

    def replace(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name not in table:
            raise KeyError(f"no value for dashboard variable '{name}' in: {expr}")
        return table[name]

    return _VARIABLE.sub(replace, expr)
