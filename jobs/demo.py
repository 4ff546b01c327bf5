"""The whole story on a local Ray cluster: fine-tune a teacher, distill quad+2quad, private inference.

Prints a table of accuracy, latency, rounds, bytes and speed-up, and where the metrics are.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="folder with GLUE SST-2 train.tsv/dev.tsv (default: hub, else synthetic)")
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--approx", default="quad+2quad", help="the student's approximation combination")
    parser.add_argument("--private-sentences", type=int, default=8, help="dev sentences run under MPC per approximation")
    parser.add_argument("--teacher-examples", type=int, default=2000, help="training sentences for the teacher")
    parser.add_argument("--distill-examples", type=int, default=2000, help="training sentences for distillation")
    parser.add_argument("--address", default=None, help="Ray address (default: the submitting cluster, else a local one)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mpcformer.cluster_connect import connect, metrics_url
    from mpcformer.config import build_config
    from mpcformer.demo import DemoConfig, format_table, run_demo

    cfg = build_config(DemoConfig, {
        "data_dir": args.data, "out": args.out, "approx": args.approx,
        "private_sentences": args.private_sentences, "teacher_examples": args.teacher_examples,
        "distill_examples": args.distill_examples,
    }, source="command line")
    # 2 parties + the dealer need 3 logical CPUs; oversubscribe a 2-core laptop rather than wait.
    with connect(args.address, num_cpus=4):
        result = run_demo(cfg)
        url = metrics_url()
    print("\n[4/4] results (" + result["data"] + ")\n")
    print(format_table(result))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    Path(cfg.out, "demo.json").write_text(json.dumps(result, indent=2))
    if url and not args.address:
        print(f"\nPrometheus metrics were exported at {url} while the embedded cluster ran; for a live view "
              "run `make monitor` (a real Prometheus on a local Ray cluster) or see docs/observability.md")
    elif url:
        print(f"\nPrometheus metrics of this cluster: {url} (dashboards: dashboards/, docs/observability.md)")
    print(f"figures: {Path(cfg.out, 'demo.json')}")
    return 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.demo"))
