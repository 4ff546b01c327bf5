"""The `mpcformer` command line skeleton: help, subcommands, one-line errors with status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mpcformer.cli import COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("argv", [["bogus"], [], ["infer", "--no-such-flag"]])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "error:" in err[-1]


def test_console_script_and_module_entrypoint_agree():
    for cmd in (["mpcformer", "--help"], [sys.executable, "-m", "mpcformer.jobs.infer", "--help"]):
        exe = cmd[0] if cmd[0] != "mpcformer" else str(__import__("pathlib").Path(sys.executable).with_name("mpcformer"))
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout


# -- --config, flags and --set: one source of truth per job ---------------------------------------------
class _Reached(BaseException):
    """A job got past its config into real work (BaseException: nothing swallows it)."""


@pytest.fixture
def configs_seen(monkeypatch):
    """The config each job would run with; the job's work (MPC, training, Ray) is never reached."""
    import mpcformer.bench.runner
    import mpcformer.cluster_connect
    import mpcformer.demo
    import mpcformer.sweep
    import mpcformer.training.distill
    import mpcformer.training.finetune

    seen: list = []

    def reached(cfg, *args, **kwargs):
        seen.append(cfg)
        raise _Reached()

    for module, name in ((mpcformer.bench.runner, "run_bench"), (mpcformer.training.finetune, "run_finetune"),
                         (mpcformer.training.distill, "run_distill"), (mpcformer.demo, "run_demo"),
                         (mpcformer.sweep, "run_sweep"), (mpcformer.cluster_connect, "connect")):
        monkeypatch.setattr(module, name, reached)
    return seen


def _bench_config(argv: list[str], seen: list):
    with pytest.raises(_Reached):
        main(["bench", *argv])
    return seen[-1]


def test_bench_takes_a_shipped_config_by_name(configs_seen):
    from mpcformer.bench.runner import BenchConfig
    from mpcformer.config import config_path, load_config

    cfg = _bench_config(["--config", "bench"], configs_seen)
    assert cfg == load_config(BenchConfig, config_path("bench"))
    assert (cfg.model, cfg.seq_len) == ("bert-base", 128) and "quad+2quad" in cfg.approx and cfg.out == "runs/bench"
    assert _bench_config([], configs_seen) == BenchConfig()  # no --config, no flag: the defaults, stated once


def test_bench_flags_override_the_yaml_and_set_overrides_the_flags(configs_seen, tmp_path):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("model: tiny\nseq_len: 32\napprox: [exact]\ntruncation_risk: false\n"
                         "mpc: {fast_matmul: false, timeout_s: 50}\n")
    cfg = _bench_config(["--config", str(yaml_file)], configs_seen)
    assert (cfg.seq_len, cfg.approx, cfg.mpc.fast_matmul, cfg.truncation_risk) == (32, ["exact"], False, False)
    cfg = _bench_config(["--config", str(yaml_file), "--seq-len", "8", "--approx", "quad+2quad,gelu+softmax",
                         "--truncation-risk", "--no-fast-exchange"], configs_seen)
    assert (cfg.model, cfg.seq_len, cfg.approx) == ("tiny", 8, ["quad+2quad", "exact"])
    assert cfg.truncation_risk and not cfg.mpc.fast_exchange and not cfg.mpc.fast_matmul and cfg.mpc.timeout_s == 50
    cfg = _bench_config(["--config", str(yaml_file), "--protocol", "mpcformer"], configs_seen)
    assert cfg.mpc.fast_matmul  # the profile overrides the file's switch ...
    cfg = _bench_config(["--config", str(yaml_file), "--protocol", "crypten", "--exact-truncation"], configs_seen)
    assert cfg.mpc.exact_truncation and not cfg.mpc.stream_triples  # ... and a single switch the profile
    cfg = _bench_config(["--config", str(yaml_file), "--seq-len", "8", "--set", "seq_len=12"], configs_seen)
    assert cfg.seq_len == 12


@pytest.mark.parametrize("argv, named", [
    (["bench", "--set", "mpc.fast_matmull=false"], "--set mpc.fast_matmull"),
    (["bench", "--config", "bench", "--set", "seq_len=1"], "--set seq_len=1"),
    (["bench", "--seq-len", "1"], "--seq-len 1"),
    (["bench", "--approx", "exact,cubic+2quad"], "--approx exact,cubic+2quad"),
    (["bench", "--network", "moon"], "--network moon"),
    (["demo", "--set", "goal_pointz=1"], "--set goal_pointz=1"),
    (["demo", "--approx", "quad+2quadd"], "--approx quad+2quadd"),
    (["finetune", "--lr", "-1"], "--lr -1"),
    (["distill", "--batch-size", "0"], "--batch-size 0"),
    (["distill", "--set", "stage1.lr=-1"], "--set stage1.lr=-1"),
    (["sweep", "--config", "sweep-quick", "--set", "max_failurez=1"], "--set max_failurez=1"),
])
def test_a_bad_flag_or_set_is_one_line_naming_it_and_exit_2(argv, named, configs_seen, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "error:" in err[0], err
    assert named in err[0], err[0]
    assert not configs_seen
