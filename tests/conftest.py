"""Shared test settings: offline hubs, quiet logs, paths to the read-only shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Ray's log handler keeps the sys.stderr of the first `import ray` (PlainRayHandler is built with
# it): imported here, that is the session's stream, not the first test's capsys one, which pytest
# closes after that test (a later Ray log line would then fail with "I/O operation on closed file").
import ray  # noqa: E402,F401

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


#: Modules that start Ray clusters or Prometheus, or run whole encrypted models (most of the suite's
#: time): marked ``slow``; ``make test-fast`` (``-m "not slow"``) runs the rest, small MPC sessions
#: included, in the edit loop; ``make test`` runs all.
SLOW_MODULES = {
    "test_bench", "test_infer_job", "test_device_script", "test_leaks", "test_network", "test_truncation",
    "test_encrypted_model", "test_prometheus_scrape", "test_ray_job_submit", "test_party_group",
    "test_mpc_session", "test_keys", "test_host_staging", "test_sweep", "test_prg", "test_training",
    "test_glue_regression", "test_multihost", "test_sweep_suite",
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    path = SHARED / "data" / "sst2"
    if not (path / "dev.tsv").is_file():
        pytest.skip(f"SST-2 data not found at {path} (../shared is absent on this machine)")
    return path


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The GLUE task folders (CoLA, MRPC, STS-B, RTE, WNLI), each with train.tsv and dev.tsv."""
    path = SHARED / "data" / "glue"
    if not (path / "README.md").is_file():
        pytest.skip(f"GLUE data not found at {path} (../shared is absent on this machine)")
    return path


def leftovers() -> tuple[list[str], list[str]]:
    """Names of live actors and states of placement groups not yet removed (after a short grace)."""
    import time

    import ray

    deadline = time.monotonic() + 10
    while True:
        actors = [a["Name"] for a in ray._private.state.actors().values() if a["State"] != "DEAD"]
        groups = [g["state"] for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
        if (not actors and not groups) or time.monotonic() > deadline:
            return actors, groups
        time.sleep(0.2)


#: Ray runtime environment of test clusters whose party actors run the tests' own party operations
#: (tests/*_party_fns.py, imported by name in the actors: see mpcformer.operations).
PARTY_FNS_RUNTIME_ENV = {"env_vars": {
    # the caller's PYTHONPATH stays behind the tests' folder (a checkout run from source keeps its code)
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH")])),
    "MPCFORMER_PARTY_OPERATIONS": "group_party_fns,infer_party_fns,probe_party_fns",
}}
