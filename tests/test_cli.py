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
