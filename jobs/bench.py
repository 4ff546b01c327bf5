"""Benchmark approximation combinations under MPC: latency, rounds, bytes per operation.

Writes bench.json, bench.md and bench.png to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mpcformer.mpc.config import PROTOCOL_PROFILES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", help="preset (tiny, minilm, bert-base, bert-large) or HF path")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per MPC forward")
    parser.add_argument("--approx", default="exact,quad+2quad", help="comma-separated combinations")
    parser.add_argument("--repeats", type=int, default=1, help="forwards per combination (fastest kept)")
    parser.add_argument("--network", default=None, help="emulate a link: lan, wan or custom:<Mbit/s>:<rtt ms>")
    parser.add_argument(
        "--protocol", choices=sorted(PROTOCOL_PROFILES), default="mpcformer",
        help="protocol profile: mpcformer's path, or crypten (CrypTen 0.4.1 as shipped: every switch below off, "
        "CrypTen's own seeds; an insecure baseline); the --no-... switches then turn single steps off",
    )
    parser.add_argument("--no-fast-matmul", action="store_true", help="CrypTen's stock int64 matmul")
    parser.add_argument(
        "--no-weight-masks", action="store_true",
        help="open every weight under a fresh mask in every forward (CrypTen's protocol) instead of once per session",
    )
    parser.add_argument(
        "--no-overlap-dealer", action="store_true",
        help="party 0 waits for each dealer answer before opening (CrypTen's order) instead of during it",
    )
    parser.add_argument(
        "--crypten-randomness", action="store_true",
        help="CrypTen's own seeds and torch.randint draws: 32 bits of entropy, the insecure baseline of the benchmarks",
    )
    parser.add_argument(
        "--no-stream-triples", action="store_true",
        help="ask the dealer for every elementwise triple instead of streaming them ahead",
    )
    parser.add_argument(
        "--no-fast-exchange", action="store_true", help="gloo's all-reduce for openings instead of one all-gather"
    )
    parser.add_argument(
        "--exact-truncation", action=argparse.BooleanOptionalAction, default=None,
        help="divide shares by public integers with the dealer's help, never off by 2^64/y "
        "(--no-exact-truncation: CrypTen's local division; default: MPCConfig's)",
    )
    parser.add_argument(
        "--no-truncation-risk", action="store_true",
        help="with CrypTen's truncation, skip the extra untimed forward that measures the expected share of "
        "sequences with a corrupted element (bench.json 'truncation')",
    )
    parser.add_argument(
        "--no-warmup", action="store_true", help="time the process's first forward too (first-call costs included)"
    )
    parser.add_argument("--launcher", choices=["local", "ray"], default="local", help="processes or Ray actors")
    parser.add_argument(
        "--insecure-transport", action="store_true",
        help="gloo over plain TCP even when the parties are on different nodes (to measure what TLS costs); "
        "default: TLS 1.3 with per-party certificates whenever they are",
    )
    parser.add_argument(
        "--role-resources", action="store_true",
        help="Ray launcher: the owner, the client and the dealer each on a node offering its resource (mpc_owner, "
        "mpc_client, mpc_dealer; e.g. `mpcformer netns`), one per node",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu",
        help="where parties and dealer compute (cuda: all on one GPU unless --gpus-per-actor says otherwise)",
    )
    parser.add_argument(
        "--gpus-per-actor", type=float, default=None, help="Ray launcher on cuda: GPU share per party and dealer"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mpcformer.bench.runner import BenchConfig, run_bench, write_report
    from mpcformer.config import build_config
    from mpcformer.mpc.config import protocol_settings
    from mpcformer.mpc.network import resolve_profile

    mpc: dict = {**protocol_settings(args.protocol), "device": args.device}
    switched_off = {
        "fast_matmul": args.no_fast_matmul, "reuse_weight_masks": args.no_weight_masks,
        "overlap_dealer": args.no_overlap_dealer, "stream_triples": args.no_stream_triples,
        "fast_exchange": args.no_fast_exchange,
    }
    mpc.update({switch: False for switch, off in switched_off.items() if off})
    if args.insecure_transport:
        mpc["transport"] = "tcp"
    if args.crypten_randomness:
        mpc["randomness"] = "crypten-insecure-baseline"
    if args.exact_truncation is not None:
        mpc["exact_truncation"] = args.exact_truncation
    if args.network:
        mpc["network"] = resolve_profile(args.network).model_copy(update={"mode": "emulate"}).model_dump()
    cfg = build_config(
        BenchConfig,
        {
            "model": args.model, "seq_len": args.seq_len, "batch_size": args.batch_size,
            "approx": [a for a in args.approx.split(",") if a], "repeats": args.repeats,
            "launcher": args.launcher, "warmup": not args.no_warmup, "gpus_per_actor": args.gpus_per_actor,
            "role_resources": args.role_resources,
            "truncation_risk": not args.no_truncation_risk,
            "mpc": mpc,
        },
        source="command line",
    )
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
    paths = write_report(report, args.out)
    print(paths[1].read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.bench"))
