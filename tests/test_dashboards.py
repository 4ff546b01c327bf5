"""Grafana dashboards, provisioning files and the Prometheus scrape config, checked offline.

Structure: unique panel ids, every datasource reference templated, every variable used, every
query names metrics that metrics.py defines (under their exported ``ray_`` names). Syntax: every
PromQL expression (variables substituted) through ``promtool check rules``; the scrape config
through ``promtool check config``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mpcformer.observability.dashboards import (
    dashboard_files, iter_panels, load_dashboard, panel_queries, referenced_variables, substitute, variables,
)
from mpcformer.observability.metrics import METRICS

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
FILES = dashboard_files(DASHBOARDS)
TEMPLATED = {"type": "prometheus", "uid": "${datasource}"}

#: Every name a Prometheus query may use: counters as exported, histograms with their series suffixes.
EXPORTED = {
    name
    for spec in METRICS
    for name in ([spec.exported_name] if spec.kind != "histogram"
                 else [spec.exported_name + s for s in ("_bucket", "_sum", "_count")])
}
_METRIC_NAME = re.compile(r"\b(ray_[a-z_]+)\b")


def _datasource_refs(node, path="$"):
    """Every ``datasource`` value anywhere in the JSON, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield path, value
            yield from _datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _datasource_refs(value, f"{path}[{i}]")


def test_two_dashboards_with_the_required_titles():
    titles = {load_dashboard(f)["title"] for f in FILES}
    assert titles == {"mpcformer / Private inference", "mpcformer / Distillation sweeps"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_panel_ids_unique_and_targets_well_formed(path):
    dashboard = load_dashboard(path)
    ids = [panel["id"] for panel in iter_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}: {sorted(ids)}"
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), f"panel {panel['id']} targets need unique refIds"
        assert all(t["expr"].strip() for t in panel["targets"])
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_datasource_reference_is_templated(path):
    dashboard = load_dashboard(path)
    refs = list(_datasource_refs(dashboard))
    assert refs, "panels must name their datasource"
    for where, value in refs:
        assert value in (TEMPLATED, "${datasource}", "$datasource"), f"{path.name} {where}: hard-coded datasource {value}"
    kinds = {v["name"]: v["type"] for v in variables(dashboard)}
    assert kinds.get("datasource") == "datasource"
    assert {"job", "approx"} <= set(kinds)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_variable_is_used_and_every_use_is_defined(path):
    dashboard = load_dashboard(path)
    names = {v["name"] for v in variables(dashboard)}
    panels_text = json.dumps(dashboard["panels"])
    other_variables = {v["name"]: json.dumps(v.get("query", "")) for v in variables(dashboard)}
    for name in names:
        used_elsewhere = any(name in referenced_variables(text) for other, text in other_variables.items() if other != name)
        assert name in referenced_variables(panels_text) or used_elsewhere, f"variable '{name}' is never used"
    builtins = {"__rate_interval", "__interval", "__range"}
    assert referenced_variables(panels_text) <= names | builtins


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_queries_use_only_defined_metrics(path):
    dashboard = load_dashboard(path)
    queries = [q.expr for q in panel_queries(dashboard)] + [
        v["query"]["query"] for v in variables(dashboard) if v["type"] == "query"
    ]
    used = {name for expr in queries for name in _METRIC_NAME.findall(expr)}
    assert used, "no metric names found"
    assert used <= EXPORTED, f"undefined metrics in {path.name}: {sorted(used - EXPORTED)}"


def test_the_dashboards_cover_the_requested_views():
    inference = " ".join(q.expr for q in panel_queries(load_dashboard(DASHBOARDS / "private-inference.json")))
    for needle in ("histogram_quantile(0.5", "histogram_quantile(0.95", "comm_rounds_total", "comm_bytes_total",
                   "operation", "outcome=\"done\"", "outcome=\"failed\"", "party_group_up", "batches_in_flight"):
        assert needle in inference, needle
    sweeps = " ".join(q.expr for q in panel_queries(load_dashboard(DASHBOARDS / "distillation-sweeps.json")))
    for needle in ("sweep_trials", "sweep_best_metric", "trial_metric", "trial_loss"):
        assert needle in sweeps, needle


def test_provisioning_files():
    datasource = yaml.safe_load((DASHBOARDS / "provisioning/datasources/mpcformer-prometheus.yaml").read_text())
    assert datasource["apiVersion"] == 1 and datasource["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((DASHBOARDS / "provisioning/dashboards/mpcformer.yaml").read_text())
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["type"] == "file" and provider["providers"][0]["options"]["path"]


needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool missing: run `bash scripts/install-system.sh` (Debian package prometheus)")


@needs_promtool
def test_every_query_is_valid_promql(tmp_path):
    rules = [
        {"record": f"check:{q.dashboard.replace('-', '_')}:{q.panel_id}_{q.ref_id}",
         "expr": substitute(q.expr, {"job": ".*", "approx": ".*"})}
        for f in FILES for q in panel_queries(load_dashboard(f))
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


@needs_promtool
def test_scrape_config_is_valid():
    done = subprocess.run(["promtool", "check", "config", str(DASHBOARDS / "prometheus.yml")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
