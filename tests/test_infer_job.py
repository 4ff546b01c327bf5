"""The encrypted-inference job on a local Ray cluster with the `tiny` model: predictions equal the
plaintext model's, an interrupted run resumes without duplicates, killing a party or the dealer
mid-job costs a retry, not an example, the client runs without reading anything of the owner's, and
bad input stops the job on the client before anything is shared or written."""

from __future__ import annotations

import json
import os
import pickle
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import PARTY_FNS_RUNTIME_ENV, leftovers
from ray_support import embedded_ray

ray = pytest.importorskip("ray")

from mpcformer.inference.job import InferConfig, finished_summary, run_infer  # noqa: E402
from mpcformer.config import load_config  # noqa: E402
from mpcformer.data import write_synthetic_sentiment  # noqa: E402

pytestmark = pytest.mark.timeout(300)

TINY_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "infer-tiny.yaml"
COMBO = "quad+2quad"


@pytest.fixture(scope="module")
def local_ray():
    with embedded_ray(num_cpus=4, runtime_env=PARTY_FNS_RUNTIME_ENV):
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_synthetic_sentiment(tmp_path_factory.mktemp("sst2-synthetic"), num_train=4, num_dev=12, seed=3)


def tiny_config(data_dir: Path, out: Path, **overrides) -> InferConfig:
    base = {
        "data.data_dir": str(data_dir), "data.max_length": 16, "out": str(out), "limit": 4, "batch_size": 2,
        "group.mpc.timeout_s": 60, "pool.backoff_s": 0.2,  # generous: CI cores are shared
    }
    return load_config(InferConfig, TINY_CONFIG, {**base, **overrides})


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]


def assert_every_example_once(out: Path, count: int) -> list[dict]:
    records = read_records(out)
    ids = Counter(r["example_id"] for r in records)
    assert sorted(ids) == list(range(count)) and set(ids.values()) == {1}, f"ids seen: {dict(ids)}"
    files = sorted((out / "batches" / COMBO).glob("batch-*.jsonl"))
    assert [f.name for f in files] == [f"batch-{i:06d}.jsonl" for i in range(count // 2)]
    return records


def plaintext_predictions(data_dir: Path, count: int) -> list[int]:
    """The plaintext approximated model on the same tokens, computed here in the test process."""
    from mpcformer.data import DataConfig, collate, encode, load_split
    from mpcformer.models.presets import load_preset
    from mpcformer.inference.protocol import plaintext_logits

    model, tokenizer = load_preset("tiny", num_labels=2, seed=0)
    examples = load_split(DataConfig(task="sst2", data_dir=str(data_dir), max_length=16), "dev")
    encoded = encode(examples, tokenizer, 16)
    predictions = []
    for start in range(0, count, 2):  # the job's batches: padding differs per batch
        batch = collate([encoded[i] for i in range(start, start + 2)], pad_token_id=tokenizer.pad_token_id)
        logits = plaintext_logits(model.eval(), COMBO, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        predictions += logits.argmax(-1).tolist()
    return predictions


def test_an_interrupted_run_resumes_on_two_groups_with_the_plaintext_predictions(local_ray, data_dir, tmp_path):
    out = tmp_path / "out"

    def interrupt(_figures: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_infer(tiny_config(data_dir, out, limit=6), progress=False, on_batch=interrupt)
    assert not json.loads((out / "status.json").read_text())["complete"]
    assert not (out / "summary.json").exists()  # the client summarises a run once every batch is in
    first = sorted((out / "batches" / COMBO).glob("batch-*.jsonl"))
    assert 1 <= len(first) <= 2  # the one that interrupted, maybe the next one if it had committed
    first_mtimes = {f.name: f.stat().st_mtime_ns for f in first}
    # what a crash mid-commit leaves behind: a half-written temp file, a partial append
    (out / "batches" / COMBO / ".batch-000002.jsonl.x.tmp").write_text('{"example_id": 4')
    with open(out / "predictions.jsonl", "a") as handle:
        handle.write('{"example_id": 5, "trunc')

    ran_again = []
    status = run_infer(tiny_config(data_dir, out, limit=6, **{"pool.groups": 2}), progress=False, on_batch=ran_again.append)
    assert status["complete"] and len(ran_again) == 3 - len(first)
    assert status["combos"][COMBO] == {"examples": 6, "batches": 3}  # the driver gets counts, no figures
    assert json.loads((out / "status.json").read_text()) == json.loads(json.dumps(status))
    summary = json.loads((out / "summary.json").read_text())  # written by the client
    assert {f.name: f.stat().st_mtime_ns for f in first} == first_mtimes  # finished batches were skipped
    assert not list(out.rglob("*.tmp"))
    records = assert_every_example_once(out, 6)
    by_id = {r["example_id"]: r for r in records}
    assert [by_id[i]["prediction"] for i in range(6)] == plaintext_predictions(data_dir, 6)
    assert all(r["prediction"] == r["plaintext_prediction"] and r["max_abs_logit_error"] < 0.05 for r in records)
    assert all(r["rounds"] > 0 and r["bytes"] > 0 and r["batch_latency_s"] > 0 for r in records)
    combo = summary["combos"][COMBO]
    assert combo["examples"] == 6 and combo["batches"] == 3
    assert combo["agreement_with_plaintext"] == 1.0 and 0.0 <= combo["accuracy"] <= 1.0
    assert combo["plaintext_task_metrics"] == combo["task_metrics"]  # the same predictions in plaintext
    assert all(len(r["plaintext_logits"]) == len(r["logits"]) for r in records)
    assert combo["batch_latency_s"]["p50"] <= combo["batch_latency_s"]["p99"]
    assert combo["bytes_per_sequence"] > 0 and combo["rounds_per_sequence"] > 0
    assert summary["complete"] and summary["examples"] == 6 and summary["retries_this_run"] == status["retries_this_run"]
    assert finished_summary(tiny_config(data_dir, out, limit=6)) == summary  # what a caller may reuse
    assert finished_summary(tiny_config(data_dir, out, limit=5)) is None  # another run's folder
    with pytest.raises(Exception, match="holds a different run"):
        run_infer(tiny_config(data_dir, out, limit=6, batch_size=3), progress=False)
    assert leftovers() == ([], [])


def kill_now(name_suffix: str) -> None:
    """SIGKILL the live actor whose name ends with ``name_suffix`` and wait until Ray sees it dead, so
    the next batch the pool hands out meets the failure (no race with the job's own pace)."""
    (actor,) = [
        a for a in ray._private.state.actors().values()
        if a["State"] == "ALIVE" and a["Name"].endswith(name_suffix) and a["Pid"]
    ]
    os.kill(actor["Pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while ray._private.state.actors(actor["ActorID"])["State"] == "ALIVE":
        assert time.monotonic() < deadline, f"{actor['Name']} still alive 60 s after SIGKILL"
        time.sleep(0.05)


def test_killing_a_party_then_the_dealer_mid_job_loses_no_example(local_ray, data_dir, tmp_path):
    out = tmp_path / "out"
    victims = ["/party-1", "/dealer"]

    def inject_faults(figures: dict) -> None:
        # after the first batch the client dies, after the next one the dealer: each time a batch remains
        if victims:
            kill_now(victims.pop(0))

    status = run_infer(tiny_config(data_dir, out, limit=6), progress=False, on_batch=inject_faults)
    records = assert_every_example_once(out, 6)
    assert all(r["prediction"] == r["plaintext_prediction"] for r in records)
    assert status["complete"] and status["retries_this_run"] == 2
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["who"] for e in events] == ["party 1", "dealer"], events
    assert all(e["will_retry"] for e in events), events  # who failed is named; the cause text is Ray's
    assert leftovers() == ([], [])


def test_the_driver_sends_each_party_paths_and_ids_only(data_dir, tmp_path):
    """Data locality: the owner's request names its model and the combo, the client's its data
    file and example ids and, only in the evaluation mode check_plaintext, the owner's model;
    neither carries the other side's plaintext."""
    from mpcformer.inference.job import plan_run, prepare_item, with_absolute_paths
    from mpcformer.inference.party_ops import client_batch, client_prepare, owner_batch, owner_prepare

    cfg = with_absolute_paths(tiny_config(data_dir, tmp_path / "out", check_plaintext=False))
    owner_prepares, client_prepares = prepare_item(cfg).calls
    assert owner_prepares.fn is owner_prepare and client_prepares.fn is client_prepare
    assert owner_prepares.args[0].name_or_path == "tiny" and "tiny" not in repr(client_prepares.args)
    batches, items = plan_run(cfg, 4, "digest")
    owner_call, client_call = items[batches[1].key].calls
    (owner_request,), (client_request,) = owner_call.args, client_call.args
    assert owner_call.fn is owner_batch and client_call.fn is client_batch
    assert vars(owner_request) == {"model": owner_prepares.args[0], "combo": COMBO, "job": "infer-tiny"}
    assert client_request.example_ids == (2, 3) and str(data_dir) in client_request.run.data
    assert client_request.run.out_dir == str(tmp_path / "out") and client_request.reference is None
    assert len(pickle.dumps(owner_call)) < 1000 and len(pickle.dumps(client_call)) < 2000
    _, evaluation = plan_run(cfg.model_copy(update={"check_plaintext": True}), 4, "digest")
    assert evaluation[batches[1].key].calls[1].args[0].reference == owner_request.model


def test_commits_are_atomic_and_once_and_percentiles_use_nearest_rank(tmp_path):
    from mpcformer.inference.batches import BatchStore, commit_batch, percentiles, plan_batches

    batches = plan_batches(5, 2, ["exact", COMBO])
    assert [(b.combo, b.example_ids) for b in batches[:3]] == [("exact", (0, 1)), ("exact", (2, 3)), ("exact", (4,))]
    store = BatchStore(tmp_path)
    store.open({"model": "tiny"})
    record = {"example_id": 4, "batch_id": 2, "prediction": 1, "label": 1}
    assert commit_batch(tmp_path, "exact", 2, [record]) is True
    assert commit_batch(tmp_path, "exact", 2, [record]) is False  # a late duplicate is dropped
    assert read_records(tmp_path) == [record] and store.is_done(batches[2]) and not store.is_done(batches[0])
    with pytest.raises(Exception, match="holds a different run"):
        BatchStore(tmp_path).open({"model": "minilm"})
    assert percentiles([4.0, 1.0, 3.0, 2.0]) == {"p50": 2.0, "p90": 4.0, "p99": 4.0, "mean": 2.5, "max": 4.0}


def test_flags_override_the_yaml(tmp_path):
    import argparse

    from mpcformer.jobs import infer as infer_job

    data_file = tmp_path / "held-out.tsv"
    data_file.write_text("sentence\tlabel\n")
    parser = argparse.ArgumentParser()
    infer_job.add_arguments(parser)
    args = parser.parse_args(["--config", "infer-tiny", "--data", str(data_file), "--approx", "quad+2relu,exact",
                              "--groups", "3", "--set", "group.mpc.timeout_s=7", "--no-plaintext-check"])
    cfg = infer_job.build_infer_config(args)
    assert cfg.model == "tiny" and cfg.data.dev_file == str(data_file) and cfg.data.data_dir == "data/sst2"
    assert cfg.combos == ["quad+2relu", "exact"] and cfg.pool.groups == 3
    assert cfg.group.mpc.timeout_s == 7 and not cfg.check_plaintext


# -------------------------------------------------------------- what the client reads, what it refuses
@pytest.fixture(scope="module")
def owner_folder(tmp_path_factory) -> Path:
    """The owner's model as a saved folder (the tiny preset's weights and tokenizer)."""
    from mpcformer.models.presets import load_preset

    folder = tmp_path_factory.mktemp("owner") / "tiny-model"
    model, tokenizer = load_preset("tiny", num_labels=2, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def wrap_client_calls(monkeypatch, operation, *head) -> None:
    """Every call the driver sends party 1 runs inside the test operation ``operation(*head, ...)``."""
    from mpcformer.cluster.party_group import PartyCall, PartyGroup
    from mpcformer.operations import operation_name

    real_run = PartyGroup.run

    def run(self, calls, *args, **kwargs):
        owner, client = calls
        wrapped = PartyCall(operation, (*head, operation_name(client.fn), tuple(client.args), dict(client.kwargs)))
        return real_run(self, [owner, wrapped], *args, **kwargs)

    monkeypatch.setattr(PartyGroup, "run", run)


def infer_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """``mpcformer infer`` with the default config, sized for this machine."""
    return ["infer", "--model", str(model), "--data", str(data), "--out", str(out), "--limit", "4",
            "--batch-size", "2", "--max-length", "16", "--no-progress", "--set", "group.cpus_per_party=0.5",
            "--set", "group.cpus_for_dealer=0.5", "--set", "group.mpc.timeout_s=60", *extra]


def test_infer_succeeds_when_the_client_cannot_read_the_owners_folder(local_ray, data_dir, owner_folder, tmp_path,
                                                                      monkeypatch, capsys):
    from infer_party_fns import sealed

    from mpcformer.cli import main
    from mpcformer.inference.protocol import plaintext_logits
    from mpcformer.models.presets import load_preset
    from mpcformer.data import DataConfig, collate, encode, load_split

    out = tmp_path / "out"
    wrap_client_calls(monkeypatch, sealed, str(owner_folder))
    assert main(infer_argv(owner_folder, data_dir, out, "--job-name", "sealed")) == 0, capsys.readouterr().err
    groups = {a["Name"].split("/")[0] for a in ray._private.state.actors().values() if a["Name"].startswith("sealed-")}
    assert len(groups) == 1, groups  # prepare, batches and summary on one party group
    attempts = Path(str(owner_folder) + ".reads.log")
    assert not attempts.exists(), attempts.read_text()  # the client never opened nor listed the owner's folder
    records = {r["example_id"]: r for r in read_records(out)}
    assert sorted(records) == [0, 1, 2, 3] and "plaintext_prediction" not in records[0]
    model, tokenizer = load_preset(str(owner_folder), num_labels=2, seed=0)
    encoded = encode(load_split(DataConfig(task="sst2", data_dir=str(data_dir), max_length=16), "dev"), tokenizer, 16)
    for start in (0, 2):
        batch = collate([encoded[i] for i in (start, start + 1)], pad_token_id=tokenizer.pad_token_id)
        logits = plaintext_logits(model.eval(), COMBO, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        assert [records[start + i]["prediction"] for i in (0, 1)] == logits.argmax(-1).tolist()
    bundle = json.loads((out / "public-bundle" / "bundle.json").read_text())
    assert bundle["facts"]["vocab_size"] == model.config.vocab_size and "tokenizer.json" in bundle["files"]
    assert not any(name.endswith((".safetensors", ".bin")) for name in bundle["files"])  # never weights
    summary = json.loads((out / "summary.json").read_text())
    assert summary["combos"][COMBO]["examples"] == 4 and summary["combos"][COMBO]["agreement_with_plaintext"] is None
    assert "plaintext_task_metrics" not in summary["combos"][COMBO] and "task_metrics" in summary["combos"][COMBO]
    status = json.loads((out / "status.json").read_text())
    assert status["complete"] and "accuracy" not in json.dumps(status)  # the driver's file: counts and paths
    assert leftovers() == ([], [])


@pytest.mark.parametrize("case", ["token id", "mask", "length"])
def test_bad_input_stops_the_job_on_the_client_with_one_line_and_no_output(local_ray, data_dir, tmp_path, case,
                                                                           monkeypatch, capsys):
    from infer_party_fns import tampered

    from mpcformer.cli import main

    out, data, extra = tmp_path / "out", data_dir, []
    if case == "token id":
        wrap_client_calls(monkeypatch, tampered, "input_ids", 30522)  # the vocabulary is 0..30521
    elif case == "mask":
        wrap_client_calls(monkeypatch, tampered, "attention_mask", 2)
    else:  # a sentence of 600 words and a max_length above the model's 512 positions
        data = tmp_path / "long"
        data.mkdir()
        (data / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n" + "good " * 600 + "\t1\n")
        extra = ["--max-length", "1024"]
    code = main(infer_argv("tiny", data, out, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    expected = {"token id": "token id 30522 is outside", "mask": "only 0 (padding) and 1",
                "length": "exceeds the model's 512 positions"}[case]
    assert code == 2 and len(err) == 1, err
    assert "error: party 1 rejected its input" in err[0] and expected in err[0], err
    assert not out.exists()  # nothing written: no bundle, no batch, no status
    assert leftovers() == ([], [])


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a Ray session's temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:  # ended meanwhile
                pass
    return found


@pytest.mark.timeout(420)
def test_sigterm_mid_job_exits_143_cleanly_and_the_rerun_completes(local_ray, data_dir, tmp_path, capsys):
    """What Kubernetes, systemd and ``ray job stop`` send: the job stops its own embedded cluster,
    writes its counts, says how to resume and exits 143; the same command then finishes the run."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from mpcformer.cli import main

    out = tmp_path / "out"
    argv = infer_argv("tiny", data_dir, out, "--limit", "8")
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "job.log"  # a file, not a pipe nobody reads while the job runs
    try:
        with open(log, "w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mpcformer.jobs.infer", *argv[1:]], env=env, stdout=sink, stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 300
            while not list((out / "batches").glob("*/batch-*.jsonl")):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "no batch finished in 300 s"
                time.sleep(0.2)
            assert _processes_mentioning(ray_tmp)  # the job's own Ray cluster is up
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + 60
        while _processes_mentioning(ray_tmp):  # actors, raylet and GCS of the job's cluster all stop
            assert time.monotonic() < deadline, _processes_mentioning(ray_tmp)
            time.sleep(0.5)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    err = log.read_text()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "run the same command again (same --out) to resume" in err, err
    status = json.loads((out / "status.json").read_text())
    assert not status["complete"] and status["combos"][COMBO]["batches"] >= 1
    capsys.readouterr()
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().err  # the resumed run says so
    records = read_records(out)
    assert sorted(r["example_id"] for r in records) == list(range(8))
    assert leftovers() == ([], [])
