"""Write the generated sentiment set (``train.tsv``, ``dev.tsv``; see :mod:`mpcformer.data.synthetic`).

    python -m mpcformer.data.make_synthetic runs/synthetic     # the quick sweep's data (sweep-quick)
"""

from __future__ import annotations

import argparse

from mpcformer.data.synthetic import write_synthetic_sentiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpcformer.data.make_synthetic",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="output folder (created if needed)")
    parser.add_argument("--num-train", type=int, default=2000, help="training examples")
    parser.add_argument("--num-dev", type=int, default=400, help="dev examples")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same sentences")
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_dev < 1:
        parser.error("--num-train and --num-dev must be positive")
    folder = write_synthetic_sentiment(args.folder, args.num_train, args.num_dev, args.seed)
    print(f"wrote {folder / 'train.tsv'} ({args.num_train} examples) and {folder / 'dev.tsv'} ({args.num_dev})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
