"""Benchmark approximation combinations under MPC: latency, rounds, bytes per operation.

    mpcformer bench --model bert-base --seq-len 128 --approx exact,quad+2quad
    mpcformer bench --config bench --protocol crypten --out runs/bench-crypten
    python -m mpcformer.jobs.bench --config my-bench.yaml --set mpc.timeout_s=300

The settings are a ``BenchConfig`` (``mpcformer.bench.runner``): its defaults, or ``--config`` (a
YAML file or a shipped config's name), then ``--protocol``, then the flags, then ``--set key=value``
(dotted, any field); a flag left out keeps the config's value. Writes bench.json, bench.md and
bench.png to the config's ``out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mpcformer.mpc.config import PROTOCOL_PROFILES

#: flag dest -> dotted BenchConfig key (``--approx`` and ``--network`` are turned into values first)
_FLAG_KEYS = {
    "model": "model", "seq_len": "seq_len", "batch_size": "batch_size", "approx": "approx", "repeats": "repeats",
    "network": "mpc.network", "no_fast_matmul": "mpc.fast_matmul", "no_weight_masks": "mpc.reuse_weight_masks",
    "no_activation_masks": "mpc.reuse_activation_masks",
    "no_overlap_dealer": "mpc.overlap_dealer", "crypten_randomness": "mpc.randomness",
    "no_stream_triples": "mpc.stream_triples", "no_fast_exchange": "mpc.fast_exchange",
    "exact_truncation": "mpc.exact_truncation", "truncation_risk": "truncation_risk", "warmup": "warmup",
    "launcher": "launcher", "device": "mpc.device", "gpus_per_actor": "gpus_per_actor", "out": "out",
    "insecure_transport": "mpc.transport", "role_resources": "role_resources",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (BenchConfig) or a shipped one's name (bench)")
    parser.add_argument("--model", help="preset (tiny, minilm, bert-base, bert-large) or HF path")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, help="sequences per MPC forward")
    parser.add_argument("--approx", help="comma-separated combinations, e.g. exact,quad+2quad")
    parser.add_argument("--repeats", type=int, help="forwards per combination (fastest kept)")
    parser.add_argument("--network", help="emulate a link: lan, wan or custom:<Mbit/s>:<rtt ms>")
    parser.add_argument(
        "--protocol", choices=sorted(PROTOCOL_PROFILES),
        help="protocol profile: mpcformer's path (MPCConfig's defaults), or crypten (CrypTen 0.4.1 as shipped: "
        "every switch below off, CrypTen's own seeds; an insecure baseline); the --no-... switches then turn "
        "single steps off",
    )
    # The seven protocol switches: each sets one MPCConfig field to CrypTen's choice; left out, the config's stands.
    parser.add_argument("--no-fast-matmul", action="store_const", const=False, help="CrypTen's stock int64 matmul")
    parser.add_argument(
        "--no-weight-masks", action="store_const", const=False,
        help="open every weight under a fresh mask in every forward (CrypTen's protocol) instead of once per session",
    )
    parser.add_argument(
        "--no-activation-masks", action="store_const", const=False,
        help="LayerNorm opens x - mean twice, for its square and its product (CrypTen's protocol), instead of once",
    )
    parser.add_argument(
        "--no-overlap-dealer", action="store_const", const=False,
        help="party 0 waits for each dealer answer before opening (CrypTen's order) instead of during it",
    )
    parser.add_argument(
        "--crypten-randomness", action="store_const", const="crypten-insecure-baseline",
        help="CrypTen's own seeds and torch.randint draws: 32 bits of entropy, the insecure baseline of the benchmarks",
    )
    parser.add_argument(
        "--no-stream-triples", action="store_const", const=False,
        help="ask the dealer for every elementwise triple instead of streaming them ahead",
    )
    parser.add_argument(
        "--no-fast-exchange", action="store_const", const=False,
        help="gloo's all-reduce for openings instead of one all-gather",
    )
    parser.add_argument(
        "--exact-truncation", action=argparse.BooleanOptionalAction,
        help="divide shares by public integers with the dealer's help, never off by 2^64/y "
        "(--no-exact-truncation: CrypTen's local division)",
    )
    parser.add_argument(
        "--truncation-risk", action=argparse.BooleanOptionalAction,
        help="with CrypTen's truncation, one extra untimed forward that measures the expected share of "
        "sequences with a corrupted element (bench.json 'truncation'); --no-truncation-risk skips it",
    )
    parser.add_argument(
        "--warmup", action=argparse.BooleanOptionalAction,
        help="an untimed 2-token forward first (--no-warmup: time the process's first forward too, first-call "
        "costs included)",
    )
    parser.add_argument("--launcher", choices=["local", "ray"], help="processes or Ray actors")
    parser.add_argument(
        "--insecure-transport", action="store_const", const="tcp",
        help="gloo over plain TCP even when the parties are on different nodes (to measure what TLS costs); "
        "default: TLS 1.3 with per-party certificates whenever they are",
    )
    parser.add_argument(
        "--role-resources", action="store_const", const=True,
        help="Ray launcher: the owner, the client and the dealer each on a node offering its resource (mpc_owner, "
        "mpc_client, mpc_dealer; e.g. `mpcformer netns`), one per node",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"],
        help="where parties and dealer compute (cuda: all on one GPU unless --gpus-per-actor says otherwise)",
    )
    parser.add_argument("--gpus-per-actor", type=float, help="Ray launcher on cuda: GPU share per party and dealer")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, dotted (e.g. mpc.timeout_s=300, seed=1); repeatable")


def build_bench_config(args: argparse.Namespace):
    """The run's :class:`~mpcformer.bench.runner.BenchConfig`: ``--config`` (or the defaults), the
    ``--protocol`` profile, the flags given, ``--set``; a bad value is blamed on what gave it."""
    from mpcformer.bench.runner import BenchConfig
    from mpcformer.config import command_line_overrides, job_config
    from mpcformer.mpc.config import protocol_settings

    overrides, names = command_line_overrides(_flag_values(args), _FLAG_KEYS, args.set)
    if args.protocol:  # under the single switches and --set: `--protocol crypten --exact-truncation` works
        profile = {f"mpc.{field}": value for field, value in protocol_settings(args.protocol).items()}
        names = {**{key: "--protocol" for key in profile if key not in overrides}, **names}
        overrides = {**profile, **overrides}
    return job_config(BenchConfig, args.config, overrides, names)


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    from mpcformer.config import ConfigError
    from mpcformer.errors import UserError
    from mpcformer.mpc.network import resolve_profile

    values = vars(args).copy()
    if args.approx is not None:
        values["approx"] = [name for name in args.approx.split(",") if name.strip()]
    if args.network is not None:
        try:
            link = resolve_profile(args.network)
        except UserError as err:
            raise ConfigError(f"--network {args.network}: {err}") from None
        values["network"] = link.model_copy(update={"mode": "emulate"}).model_dump()
    return values


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mpcformer.bench.runner import run_bench, write_report

    cfg = build_bench_config(args)
    with tqdm(total=len(cfg.approx), desc="bench", unit="combo") as bar, \
            tqdm(total=0, desc="layers", unit="layer", position=1, leave=False) as layers:

        def starting(index: int) -> None:  # the parties and the dealer start before the first event
            if index < len(cfg.approx):
                bar.set_postfix_str(f"running {cfg.approx[index]}")
                layers.set_description(f"{cfg.approx[index]}: starting the parties and the dealer")
                layers.refresh()

        def finished(name: str) -> None:
            bar.update(1)
            starting(bar.n)

        def on_party_progress(name: str, event: dict) -> None:
            # The client reports each forward it starts and each encoder layer it finishes.
            if event.get("kind") == "forward":
                layers.reset()
                layers.set_description(f"{name}: {event['label']}")
            elif event.get("kind") == "layer":
                if layers.total != event["total"]:
                    layers.reset(total=event["total"])
                layers.update(event["done"] - layers.n)

        starting(0)
        report = run_bench(cfg, progress=finished, party_progress=on_party_progress)
    paths = write_report(report, Path(cfg.out))
    print(paths[1].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.bench"))
