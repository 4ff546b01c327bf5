"""The demo's data fallback and its closing table (the full demo runs as `make demo`)."""

from __future__ import annotations

import pytest

from mpcformer.config import ConfigError, build_config
from mpcformer.demo import DemoConfig, closing_line, format_table, resolve_demo_data


def test_offline_without_data_falls_back_to_synthetic_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    said: list[str] = []
    data, source = resolve_demo_data(DemoConfig(out=str(tmp_path)), said.append)
    assert "synthetic" in source and data.data_dir and (tmp_path / "synthetic-data" / "dev.tsv").is_file()
    assert len(said) == 1 and "SYNTHETIC" in said[0]


def test_local_folder_is_used_as_given(sst2_dir, tmp_path):
    said: list[str] = []
    data, source = resolve_demo_data(DemoConfig(data_dir=str(sst2_dir), out=str(tmp_path)), said.append)
    assert data.data_dir == str(sst2_dir.resolve()) and "SST-2" in source and not said


def test_unknown_approximation_is_rejected_up_front():
    with pytest.raises(ConfigError, match="known"):
        build_config(DemoConfig, {"approx": "cubic+2quad"})


def _result(teacher_acc: float, student_acc: float) -> dict:
    row = dict(rounds_per_sequence=300.0, bytes_per_sequence=2e8, dev_sentences=872)
    return {"goal_points": 3.0, "speedup_sentences": 16, "student_before_distillation": 0.49, "rows": [
        {**row, "approx": "exact", "plaintext_dev_accuracy": teacher_acc, "private_accuracy": 0.875,
         "private_sentences": 16, "agreement_with_plaintext": 1.0, "seconds_per_sequence": 12.0, "speedup_vs_exact": 1.0},
        {**row, "approx": "quad+2quad", "plaintext_dev_accuracy": student_acc, "private_accuracy": 0.859375,
         "private_sentences": 64, "agreement_with_plaintext": 63 / 64, "seconds_per_sequence": 4.0,
         "speedup_vs_exact": 3.0},
    ]}


def test_table_shows_every_row_the_speedup_and_the_sentences_behind_each_accuracy():
    table = format_table(_result(0.88, 0.87))
    exact, student = (line for line in table.splitlines()[2:] if " | " in line)
    assert "(872)" in exact and "(16)" in exact and "16/16" in exact and "1.00x" in exact
    assert "(872)" in student and "(64)" in student and "63/64" in student and "3.00x" in student
    assert "same first 16 sentences" in table and "0.490" in table


def test_closing_line_claims_the_goal_only_when_the_student_is_within_it():
    hit = closing_line(_result(0.880, 0.860))
    assert "keeps 97.7%" in hit and "872" in hit and "3.0x faster" in hit and "MISSING" not in hit
    miss = closing_line(_result(0.880, 0.845))
    assert "MISSING" in miss and "3.5 points" in miss and "keeps" not in miss and "3.0x faster" in miss


def test_teacher_sentences_must_be_batches_the_student_also_runs():
    with pytest.raises(ConfigError, match="exceed"):
        build_config(DemoConfig, {"private_sentences": 16, "exact_private_sentences": 32})
    with pytest.raises(ConfigError, match="multiple"):
        build_config(DemoConfig, {"private_sentences": 64, "exact_private_sentences": 12, "batch_size": 8})


def _command_line(*flags: str):
    import argparse

    from mpcformer.jobs.demo import add_arguments, demo_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return demo_config(parser.parse_args(list(flags)))


def test_flags_left_out_keep_the_config_defaults_and_given_ones_override_them():
    assert _command_line() == DemoConfig()
    cfg = _command_line("--private-sentences", "32", "--seed", "3")
    assert cfg == DemoConfig(private_sentences=32, seed=3)
    with pytest.raises(ConfigError, match="--teacher-examples 0"):
        _command_line("--teacher-examples", "0")


def test_heartbeat_speaks_while_a_long_step_runs_and_stops_after_it():
    import threading

    from mpcformer.demo import heartbeat

    said: list[str] = []
    first = threading.Event()

    def say(line: str) -> None:
        said.append(line)
        first.set()

    with heartbeat(say, "private inference (exact) running", every_s=0.01):
        assert first.wait(10)
    count = len(said)
    assert count >= 1 and all("private inference (exact) running" in line for line in said)
    threading.Event().wait(0.05)
    assert len(said) == count  # silent once the block is over
