"""demo (not built yet)."""

from __future__ import annotations

import argparse

from mpcformer.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise UserError("'demo' is not available yet in this version")


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.demo"))
