"""The wheel a non-editable install gets: quiet to build, and it ships the job configs that
``--config <name>`` finds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT

#: what the build backend must not say (pyproject.toml's license, the configs' package)
NOISE = ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "is absent from the `packages`")


@pytest.mark.timeout(600)
def test_the_wheel_builds_quietly_and_ships_every_shipped_config(tmp_path):
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs the git checkout (the wheel is built from its tracked files)")
    source = tmp_path / "src"  # a copy: building in the checkout would leave build/ and *.egg-info there
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        path = REPO_ROOT / name
        if path.is_file() and not path.is_symlink():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True, timeout=540,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    noise = [line for line in (built.stdout + built.stderr).splitlines() if any(n in line for n in NOISE)]
    assert noise == [], "\n".join(noise)
    (wheel,) = (tmp_path / "wheel").glob("mpcformer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO_ROOT / "jobs" / "configs").glob("*.yaml"))
    assert sorted(Path(n).name for n in names if n.startswith("mpcformer/jobs/configs/")) == shipped
    assert "mpcformer/jobs/configs/bench.yaml" in names
    assert not [n for n in names if n.endswith(("leak_tap.py", "int8_probe.py"))]  # test and experiment code stay out
