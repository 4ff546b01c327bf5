"""Operator paths that must fail fast: bad input to ``mpcformer infer`` is one line and exit 2 before
any Ray start, with the flag that gave it named; a run folder left by a failed start does not block
the corrected command."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from unittest import mock

import pytest

from mpcformer.cli import main
from mpcformer.inference.batches import BatchStore, commit_batch
from mpcformer.data import write_synthetic_sentiment
from mpcformer.errors import UserError


class _RayStarted(BaseException):
    """The job got past its up-front checks (BaseException: nothing swallows it)."""


def _run_blocked(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in process with Ray and the job's work replaced by a sentinel."""
    def reached(*args, **kwargs):
        raise _RayStarted()

    err = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("mpcformer.cluster_connect.connect", reached))
        stack.enter_context(mock.patch("mpcformer.inference.job.run_infer", reached))
        stack.enter_context(contextlib.redirect_stderr(err))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_sentiment(tmp_path_factory.mktemp("sst2"), num_train=4, num_dev=6, seed=1)


def _argv(tmp_path: Path, data: Path, *extra: str, model: str = "tiny") -> list[str]:
    return ["infer", "--model", model, "--data", str(data), "--out", str(tmp_path / "out"), "--no-progress", *extra]


def _bad_inputs(tmp_path: Path, data_dir: Path) -> dict[str, tuple[list[str], str]]:
    latin1 = tmp_path / "latin1"
    latin1.mkdir()
    (latin1 / "dev.tsv").write_bytes("sentence\tlabel\ncaf\xe9 cr\xe8me\t1\n".encode("latin-1"))
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n  \t0\ngood\t1\n")
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    return {  # case -> (argv, what the one line must name)
        "non-UTF-8 data": (_argv(tmp_path, latin1), "not UTF-8"),
        "missing data file": (_argv(tmp_path, tmp_path / "nowhere" / "dev.tsv"), "nowhere"),
        "missing data folder": (_argv(tmp_path, tmp_path / "nowhere"), "nowhere"),
        "empty sentence": (_argv(tmp_path, blank), "ids 1"),
        "unknown model name": (_argv(tmp_path, data_dir, model="no-such-model"), "no-such-model"),
        "unknown hub name offline": (_argv(tmp_path, data_dir, model="nobody/no-such-model"), "no-such-model"),
        "folder without config.json": (_argv(tmp_path, data_dir, model=str(not_a_model)), "config.json"),
        "batch size 0": (_argv(tmp_path, data_dir, "--batch-size", "0"), "--batch-size 0"),
        "--set typo": (_argv(tmp_path, data_dir, "--set", "pool.gruops=2"), "--set pool.gruops=2"),
        "--set bad value": (_argv(tmp_path, data_dir, "--set", "batch_size=-3"), "--set batch_size=-3"),
    }


CASES = ["non-UTF-8 data", "missing data file", "missing data folder", "empty sentence", "unknown model name",
         "unknown hub name offline", "folder without config.json", "batch size 0", "--set typo", "--set bad value"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2_before_ray_starts(case, tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv, named = _bad_inputs(tmp_path, data_dir)[case]
    code, err = _run_blocked(argv)  # _RayStarted propagates if a check was missed
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "error:" in lines[0], err
    assert named in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_good_input_reaches_ray(tmp_path, data_dir, monkeypatch):
    """The control: the same command with good input gets past every up-front check."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(_RayStarted):
        _run_blocked(_argv(tmp_path, data_dir))


def _run_info(data: str) -> dict:
    return {"model": "tiny", "data": data, "combos": ["quad+2quad"], "batch_size": 2}


def test_a_failed_start_does_not_block_the_corrected_run(tmp_path):
    store = BatchStore(tmp_path / "out")
    store.open(_run_info("/wrong/path"))  # started, then failed before any batch
    store.log_event({"event": "group_failure"})
    store.open(_run_info("/right/path"))  # the corrected command: accepted, the old run's files gone
    assert json.loads((tmp_path / "out" / "run.json").read_text())["data"] == "/right/path"
    assert not (tmp_path / "out" / "events.jsonl").exists()
    assert store.finished_batches() == 0
    commit_batch(tmp_path / "out", "quad+2quad", 0, [{"example_id": 0}])
    store.open(_run_info("/right/path"))  # the same run resumes
    assert store.finished_batches() == 1
    with pytest.raises(UserError, match="holds a different run with 1 finished batches"):
        store.open(_run_info("/other/path"))  # finished work is never thrown away


def test_overlong_examples_are_the_ones_encode_cuts():
    from transformers import AutoTokenizer

    from mpcformer.data import DataConfig, TextExamples, encode, overlong_examples, resolve_task
    from mpcformer.models.presets import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    texts = [("short",), ("good " * 20,), ("a b c",), ("word " * 5000,)]
    examples = TextExamples(resolve_task(DataConfig()), texts, [1, 0, 1, 0], "test")
    assert overlong_examples(examples, tokenizer, 16) == [1, 3]
    assert [len(f["input_ids"]) for f in encode(examples, tokenizer, 16).features] == [3, 16, 5, 16]
