"""The runtime (mpcformer.mpc.runtime): every change to CrypTen and torch.distributed is in its
manifest, lives exactly as long as a session, and no library code assigns into them elsewhere."""

from __future__ import annotations

import ast
import multiprocessing as mp
import os
import queue
import shutil
import tempfile
from pathlib import Path

import pytest

from mpcformer.mpc import runtime
from mpcformer.mpc.config import PROTOCOL_PROFILES, MPCConfig
from mpcformer.mpc.runtime import MANIFEST, Patch, Runtime

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ROOT / "platform"
RUNTIME_FILE = PLATFORM / "mpcformer" / "mpc" / "runtime.py"
#: test machinery that spies on torch.distributed: it too goes through the runtime (``runtime.swapped``)
TEST_SPIES = [ROOT / "tests" / "leak_tap.py"]
FOREIGN = ("crypten", "torch")


# -- no assignment into CrypTen or torch outside the runtime ------------------------------------------
def _foreign_names(tree: ast.AST) -> set[str]:
    """Local names bound to CrypTen or torch modules and objects by the file's imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FOREIGN:
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in FOREIGN or node.module == "mpcformer.mpc.compat":
                names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _attribute_targets(target: ast.AST) -> list[ast.Attribute]:
    if isinstance(target, (ast.Tuple, ast.List)):
        return [leaf for element in target.elts for leaf in _attribute_targets(element)]
    return [target] if isinstance(target, ast.Attribute) else []


def foreign_assignments(path: Path) -> list[str]:
    """``setattr(<crypten/torch thing>, ...)`` calls and ``<crypten/torch thing>.x = ...`` statements.

    Items stored into CrypTen's tables are not attributes replaced: ``keys.setup_prng`` fills
    ``crypten.generators`` as the CrypTen function it stands in for does."""
    tree = ast.parse(path.read_text(), filename=str(path))
    foreign = _foreign_names(tree)
    found = []
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            if node.args and _root(node.args[0]) in foreign:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
            continue
        elif isinstance(node, ast.Delete):
            targets = node.targets
        if any(_root(leaf) in foreign for target in targets for leaf in _attribute_targets(target)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:120]}")
    return found


def test_the_scan_finds_assignments_into_crypten_and_torch(tmp_path):
    sample = PLATFORM / "mpcformer" / "mpc" / "_scan_sample.py"  # inside platform/, for relative names
    sample.write_text(
        "import torch.distributed as dist\nfrom crypten.mpc.primitives import beaver as cb\n"
        "from mpcformer.mpc.compat import crypten\nfrom crypten.communicator import DistributedCommunicator\n"
        "dist.new_group = None\nsetattr(cb, 'square', None)\ncrypten.mpc.x = 1\n"
        "DistributedCommunicator.all_reduce = None\nmine = object()\nmine.x = 1\n"
    )
    try:
        assert len(foreign_assignments(sample)) == 4
    finally:
        sample.unlink()


def test_no_library_code_assigns_into_crypten_or_torch_outside_the_runtime():
    library = [path for path in sorted(PLATFORM.rglob("*.py")) if path != RUNTIME_FILE and "__pycache__" not in path.parts]
    offenders = [hit for path in library + TEST_SPIES for hit in foreign_assignments(path)]
    assert offenders == [], "assign into CrypTen/torch through mpcformer.mpc.runtime:\n" + "\n".join(offenders)


# -- the manifest --------------------------------------------------------------------------------
def test_every_patch_resolves_and_names_a_known_switch_and_condition():
    for patch in MANIFEST:
        assert patch.switch in runtime.SWITCHES and patch.condition in runtime.CONDITIONS, patch
        target = patch.resolve_target()
        patch.read(target)  # the attribute exists where CrypTen / torch has it
        assert callable(runtime._resolve(patch.replacement)) or not patch.wraps
    assert len({(p.name, p.target, p.attribute) for p in MANIFEST}) == len(MANIFEST)  # once per purpose
    layered = [p.name for p in MANIFEST if p.attribute == "all_reduce"]
    assert layered == ["exchange", "tap"]  # the tap wraps the exchange (restore: the other way round)


def test_eligibility_is_one_check():
    ttp, cuda = MPCConfig(), MPCConfig(device="cuda")
    tfp = MPCConfig(dealer="tfp", insecure_dealer=True)
    assert runtime.eligible("ttp-2-parties-cpu", ttp, 2)
    assert not runtime.eligible("ttp-2-parties-cpu", ttp, 3)
    assert not runtime.eligible("ttp-2-parties-cpu", tfp, 2) and not runtime.eligible("ttp-cpu", cuda, 2)
    assert runtime.eligible("cuda", cuda, 2) and not runtime.eligible("cuda", ttp, 2)


def _patched_values() -> dict[tuple[str, str], object]:
    return {(p.target, p.attribute): p.read(p.resolve_target()) for p in MANIFEST}


@pytest.mark.parametrize("profile", sorted(PROTOCOL_PROFILES))
def test_install_applies_the_profiles_patches_and_restore_puts_every_original_back(profile):
    config = MPCConfig(**PROTOCOL_PROFILES[profile])
    before = _patched_values()
    installed = Runtime(config, parties=2).install()
    try:
        assert runtime.active() is installed
        during = _patched_values()
        replaced = {key for key in before if during[key] is not before[key]}  # layered patches: one key
        assert replaced == {(p.target, p.attribute) for p in installed.patches}
        assert replaced == {(p.target, p.attribute) for p in MANIFEST if p.applies(config, 2)}
    finally:
        installed.restore()
    assert runtime.active() is None
    after = _patched_values()
    assert all(after[key] is before[key] for key in before)


def test_a_failing_install_restores_what_it_had_applied(monkeypatch):
    before = _patched_values()
    broken = Patch("broken", "crypten.mpc.primitives.beaver", "no_such_attribute", "mpcformer.mpc.beaver:square")
    monkeypatch.setattr(runtime, "MANIFEST", MANIFEST + (broken,))
    with pytest.raises(AttributeError):
        Runtime(MPCConfig(), parties=2).install()
    assert runtime.active() is None
    assert all(value is before[key] for key, value in _patched_values().items())


def test_one_runtime_at_a_time():
    first = Runtime(MPCConfig(), parties=2).install()
    try:
        with pytest.raises(RuntimeError, match="one session at a time"):
            Runtime(MPCConfig(), parties=2).install()
    finally:
        first.restore()


def test_crypten_settings_are_undone_at_restore():
    from mpcformer.mpc.compat import crypten

    precision = crypten.cfg.encoder.precision_bits
    installed = Runtime(MPCConfig(precision_bits=precision + 3), parties=2).install()
    try:
        assert crypten.cfg.encoder.precision_bits == precision + 3 and crypten.cfg.communicator.verbose
    finally:
        installed.restore()
    assert crypten.cfg.encoder.precision_bits == precision


def test_describe_names_the_path_of_each_profile():
    for profile, expected in (
        ("mpcformer", {"owner_operands": "reused weight masks", "elementwise_triples": "streamed",
                       "exchange": "all-gather", "dealer_overlap": True, "truncation": "crypten local division"}),
        ("crypten", {"owner_operands": "beaver triples", "elementwise_triples": "dealer requests",
                     "exchange": "all-reduce", "dealer_overlap": False, "matmul_kernel": "stock",
                     "beaver_matmul": "3 local matmuls"}),
    ):
        installed = Runtime(MPCConfig(**PROTOCOL_PROFILES[profile]), parties=2).install()
        try:
            path = runtime.describe()
        finally:
            installed.restore()
        assert path["profile"] == profile and runtime.protocol_label(path) == profile
        assert {key: path[key] for key in expected} == expected
    assert runtime.describe() is None
    custom = Runtime(MPCConfig(fast_exchange=False), parties=2).install()
    try:
        label = runtime.protocol_label(runtime.describe())
    finally:
        custom.restore()
    assert label.startswith("custom:") and "allreduce" in label


# -- a real session --------------------------------------------------------------------------------
def _run_session(config: MPCConfig) -> list[dict]:
    """2 party processes (tests/runtime_party_fns.party_main) and the dealer, as the launcher runs them."""
    from mpcformer.mpc.launcher import _dealer_main

    import runtime_party_fns as fns

    ctx = mp.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="mpcformer-rt-")
    rendezvous = f"file://{os.path.join(workdir, 'rendezvous')}"
    results = ctx.Queue()
    procs = [ctx.Process(target=fns.party_main, args=(rank, rendezvous, config, results), daemon=True) for rank in (0, 1)]
    procs.append(ctx.Process(target=_dealer_main, args=(2, rendezvous, config, results, 1), daemon=True))
    try:
        for proc in procs:
            proc.start()
        out: dict[int, object] = {}
        while len(out) < 3:
            try:
                rank, status, value = results.get(timeout=240)
            except queue.Empty:
                pytest.fail(f"no answer from {sorted({0, 1, 2} - set(out))} within 240 s")
            assert status == "ok", value
            out[rank] = value
        return [out[0], out[1]]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("profile", sorted(PROTOCOL_PROFILES))
def test_a_session_replaces_only_the_manifests_attributes_and_restores_each(profile):
    config = MPCConfig(**{**PROTOCOL_PROFILES[profile], "exact_truncation": profile == "mpcformer"})
    for party in _run_session(config):
        manifest = sorted({tuple(entry) for entry in party["manifest"]})  # layered patches: one attribute
        assert manifest, "a session always installs some patches (the tap, the config cache)"
        assert [tuple(entry) for entry in party["changed_during"]] == manifest  # nothing outside the manifest
        assert party["changed_after"] == []  # every original back
        assert party["protocol_path"]["profile"] == profile


def test_a_session_that_cannot_join_restores_everything(tmp_path):
    from mpcformer.mpc.session import MPCSession, SessionError

    before = _patched_values()
    lonely = MPCSession(0, 2, f"file://{tmp_path / 'rendezvous'}", MPCConfig(timeout_s=2))  # party 1 never comes
    with pytest.raises(SessionError, match="could not join"):
        lonely.__enter__()
    assert runtime.active() is None and lonely.runtime is None
    assert all(value is before[key] for key, value in _patched_values().items())
