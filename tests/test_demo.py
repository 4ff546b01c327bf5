"""The demo's data fallback and its closing table (the full demo runs as `make demo`)."""

from __future__ import annotations

import pytest

from mpcformer.config import ConfigError, build_config
from mpcformer.demo import DemoConfig, format_table, resolve_demo_data


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


def test_table_shows_every_row_and_the_speedup():
    row = dict(plaintext_dev_accuracy=0.9, private_accuracy=0.875, agreement_with_plaintext=1.0,
               rounds_per_sequence=300.0, bytes_per_sequence=2e8)
    table = format_table({"rows": [
        {**row, "approx": "exact", "seconds_per_sequence": 12.0, "speedup_vs_exact": 1.0},
        {**row, "approx": "quad+2quad", "seconds_per_sequence": 4.0, "speedup_vs_exact": 3.0},
    ]})
    assert "quad+2quad" in table and "3.00x" in table and "1.00x" in table
