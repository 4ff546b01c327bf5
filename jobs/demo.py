"""The whole story on a local Ray cluster: fine-tune a teacher, distill quad+2quad, private inference.

Prints a table of accuracy (with the number of sentences behind each figure), latency, rounds,
bytes and speed-up, one line that says the result in words, and where the metrics are. The budget
is `mpcformer.demo.DemoConfig`'s (what it takes and reaches: docs/results.md); every flag left out keeps it,
`--set key=value` changes any other field.
"""

from __future__ import annotations

import argparse

#: flag dest -> DemoConfig field (a flag left out keeps the config's value)
_FLAG_KEYS = {
    "data": "data_dir", "out": "out", "approx": "approx", "private_sentences": "private_sentences",
    "exact_sentences": "exact_private_sentences", "teacher_examples": "teacher_examples",
    "stage1_examples": "stage1_examples", "stage2_examples": "stage2_examples", "min_train_words": "min_train_words",
    "max_length": "max_length", "batch_size": "batch_size", "seed": "seed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (DemoConfig); default: its built-in budget")
    parser.add_argument("--data", help="folder with GLUE SST-2 train.tsv/dev.tsv (default: hub, else synthetic)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--approx", help="the student's approximation combination")
    parser.add_argument("--private-sentences", type=int, help="first dev sentences the student runs under MPC")
    parser.add_argument("--exact-sentences", type=int,
                        help="first dev sentences the teacher (exact, the slow one) runs under MPC")
    parser.add_argument("--teacher-examples", type=int, help="training sentences for the teacher")
    parser.add_argument("--stage1-examples", type=int, help="training sentences of the layer-wise stage")
    parser.add_argument("--stage2-examples", type=int, help="training sentences of the prediction stage")
    parser.add_argument("--min-train-words", type=int,
                        help="leave out training sentences with fewer words (SST-2: its short sub-phrases)")
    parser.add_argument("--max-length", type=int, help="tokens per sentence (longer ones are cut)")
    parser.add_argument("--batch-size", type=int, help="sequences per MPC forward")
    parser.add_argument("--seed", type=int, help="seed of training and data order")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any DemoConfig field (e.g. stage1_lr=1e-4); repeatable")
    parser.add_argument("--address", help="Ray address (default: the submitting cluster, else a local one)")


def demo_config(args: argparse.Namespace):
    """The :class:`~mpcformer.demo.DemoConfig` of the command line: ``--config`` (or the defaults), the
    flags given, ``--set``."""
    from mpcformer.config import command_line_overrides, job_config
    from mpcformer.demo import DemoConfig

    overrides, names = command_line_overrides(vars(args), _FLAG_KEYS, args.set)
    return job_config(DemoConfig, args.config, overrides, names)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mpcformer.cluster_connect import connect, metrics_url
    from mpcformer.demo import closing_line, format_table, run_demo

    cfg = demo_config(args)
    # 2 parties + the dealer need 3 logical CPUs; oversubscribe a 2-core laptop rather than wait.
    with connect(args.address, num_cpus=4):
        result = run_demo(cfg)
        url = metrics_url()
    print("\n[4/4] results (" + result["data"] + ")\n")
    print(format_table(result))
    print("\n" + closing_line(result))
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
