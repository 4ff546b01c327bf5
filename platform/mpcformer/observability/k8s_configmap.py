"""Generate the Grafana dashboards ConfigMap for Kubernetes from ``dashboards/*.json``.

The JSON files stay the one source of truth; the ConfigMap (label ``grafana_dashboard: "1"``,
which the Grafana sidecar of kube-prometheus-stack picks up) is derived from them:

    python -m mpcformer.observability.k8s_configmap            # rewrite k8s/base/grafana-dashboards.yaml
    python -m mpcformer.observability.k8s_configmap --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import yaml

from mpcformer.observability.dashboards import DEFAULT_DASHBOARDS_DIR, dashboard_files

__all__ = ["CONFIGMAP_NAME", "DEFAULT_OUTPUT", "render_configmap", "main"]

CONFIGMAP_NAME = "mpcformer-grafana-dashboards"
DEFAULT_OUTPUT = DEFAULT_DASHBOARDS_DIR.parent / "k8s" / "base" / "grafana-dashboards.yaml"

_HEADER = (
    "# GENERATED from dashboards/*.json by `python -m mpcformer.observability.k8s_configmap`: do not edit.\n"
    "# The Grafana sidecar (kube-prometheus-stack) loads ConfigMaps labelled grafana_dashboard: \"1\".\n"
)


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, so the dashboards stay readable in the ConfigMap."""


def _literal(dumper: yaml.SafeDumper, text: str):
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_LiteralDumper.add_representer(str, _literal)


def render_configmap(dashboards_dir: str | Path = DEFAULT_DASHBOARDS_DIR) -> str:
    """The ConfigMap YAML: one ``data`` key per dashboard file, its text unchanged."""
    data = {path.name: path.read_text() for path in dashboard_files(dashboards_dir)}
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP_NAME,
            "labels": {"app.kubernetes.io/name": "mpcformer", "grafana_dashboard": "1"},
            "annotations": {"grafana_folder": "mpcformer"},  # sidecar folderAnnotation (optional)
        },
        "data": data,
    }
    return _HEADER + yaml.dump(configmap, Dumper=_LiteralDumper, sort_keys=False, width=1_000_000)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpcformer.observability.k8s_configmap", description=__doc__.splitlines()[0])
    parser.add_argument("--dashboards", type=Path, default=DEFAULT_DASHBOARDS_DIR, help="folder of dashboard JSON files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT, help="ConfigMap YAML to write")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when --out differs")
    args = parser.parse_args(argv)
    text = render_configmap(args.dashboards)
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m mpcformer.observability.k8s_configmap", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes, {text.count('.json: |')} dashboards)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
