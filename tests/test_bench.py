"""`mpcformer bench`: the report schema, and emulated links agreeing with the analytic projection."""

from __future__ import annotations

import json

import pytest

from mpcformer.bench.runner import BenchConfig, run_bench
from mpcformer.cli import main
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.network import NetworkProfile, project_latency

OP_KEYS = {"time_s", "rounds", "bytes"}


@pytest.mark.timeout(400)
def test_bench_cli_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--model", "tiny", "--seq-len", "16", "--approx", "exact,quad+2quad", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert {"settings", "environment", "combinations", "protocol_path"} <= set(report)
    assert report["protocol_path"]["profile"] == "mpcformer"
    assert report["protocol_path"]["owner_operands"] == "reused weight masks"
    assert "Protocol: mpcformer" in (out / "bench.md").read_text()
    assert report["environment"]["versions"]["crypten"]
    combos = {c["approx"]: c for c in report["combinations"]}
    assert set(combos) == {"exact", "quad+2quad"}
    for c in combos.values():
        assert {"approx", "latency_s", "comm_time_s", "rounds", "bytes", "speedup_vs_exact", "ops"} <= set(c)
        assert c["latency_s"] > 0 and c["rounds"] > 0 and c["bytes"] > 0
        for op in ("embedding", "linear", "softmax", "activation", "layernorm"):
            assert OP_KEYS <= set(c["ops"][op]), op
        assert set(c["projected_latency_s"]) == {"lan", "wan"}
        assert c["projected_latency_s"]["wan"] > c["projected_latency_s"]["lan"]
    assert combos["exact"]["speedup_vs_exact"] == pytest.approx(1.0)
    assert combos["quad+2quad"]["rounds"] < combos["exact"]["rounds"]
    saved = combos["exact"]["rounds"] - combos["quad+2quad"]["rounds"]
    assert combos["exact"]["rounds_saved_vs_exact"] == 0 and combos["quad+2quad"]["rounds_saved_vs_exact"] == saved
    for op in combos["quad+2quad"]["ops"].values():  # each operation on each link
        assert set(op["projected_latency_s"]) == {"lan", "wan"} and op["projected_latency_s"]["wan"] >= 0
    markdown = (out / "bench.md").read_text()
    assert "rounds saved vs exact" in markdown and "## WAN projection per operation (s)" in markdown
    assert "| quad+2quad |" in (out / "bench.md").read_text()
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr()
    assert "bench.json" in printed.out
    # The layer bar follows the client party through the warm-up and the timed forward of each combination.
    for label in ("exact: warm-up", "exact: forward 1/1", "quad+2quad: forward 1/1"):
        assert label in printed.err, label
    assert "quad+2quad: forward 1/1: 100%" in printed.err  # the bar reached the last encoder layer


@pytest.mark.timeout(600)
def test_emulated_wan_link_adds_the_analytic_link_time():
    """The emulated link delays the exchanges by what the analytic projection charges for them.
    Compared on communication time, which the local compute's pace (a loaded machine) leaves alone."""
    link = NetworkProfile(name="wan-like", bandwidth_bps=100e6, rtt_s=0.04, mode="emulate")
    # the fastest of 3 forwards: comm time includes waiting for the peer, whose pace a loaded machine varies
    base_cfg = BenchConfig(model="tiny", seq_len=16, approx=["quad+2quad"], repeats=3, truncation_risk=False)
    base = run_bench(base_cfg)["combinations"][0]
    emulated = run_bench(base_cfg.model_copy(update={"mpc": MPCConfig(network=link)}))["combinations"][0]
    assert emulated["rounds"] == base["rounds"] and emulated["bytes"] == base["bytes"]
    link_s = link.comm_seconds(base["rounds"], base["bytes"])
    assert link_s > base["latency_s"] / 2  # the link matters
    added = emulated["comm_time_s"] - base["comm_time_s"]
    assert abs(added - link_s) / link_s < 0.25, (added, link_s)  # a missing or doubled link is off by 100%
    compute_s = emulated["latency_s"] - emulated["comm_time_s"]
    projected = project_latency(compute_s + base["comm_time_s"], base["rounds"], base["bytes"], link)
    assert abs(emulated["latency_s"] - projected) / projected < 0.15, (emulated["latency_s"], projected)


def test_batching_bench_shares_rounds_and_weight_sized_traffic_across_the_batch(tmp_path, capsys):
    from mpcformer.bench import batching

    out = tmp_path / "batching"
    assert batching.main(["--model", "tiny", "--seq-len", "8", "--batch-sizes", "1,2", "--rounds", "1", "--out", str(out)]) == 0
    report = json.loads((out / "batching.json").read_text())
    one, two = report["batches"]
    assert (one["batch_size"], two["batch_size"]) == (1, 2)
    assert one["rounds"] == two["rounds"] > 0  # the batch shares every round
    # With reusable weight masks no weight-sized opening is left in a forward: its bytes are the
    # openings of activations, which grow with the batch, so bytes per sequence stay about equal.
    assert 0.9 * one["bytes_per_sequence"] <= two["bytes_per_sequence"] <= one["bytes_per_sequence"]
    assert two["latency_per_sequence_s"] == two["latency_s"] / 2
    assert one["per_sequence_vs_smallest_batch"] == 1.0
    assert set(report["samples"]) == {"1", "2"} and all(len(v) == 1 for v in report["samples"].values())
    assert "| 2 |" in (out / "batching.md").read_text()


def test_protocol_path_bench_adds_one_switch_at_a_time(tmp_path, capsys):
    from mpcformer.bench import matmul_path

    out = tmp_path / "matmul_path"
    assert matmul_path.main(["--model", "tiny", "--seq-len", "8", "--rounds", "1", "--out", str(out)]) == 0
    report = json.loads((out / "matmul_path.json").read_text())
    rows = {r["path"]: r for r in report["paths"]}
    assert list(rows) == [
        "crypten", "fast-matmul", "weight-masks", "overlap-dealer", "aes-prg", "triple-streams", "fast-exchange",
        "mpcformer",
    ]
    # Owner operands also take rounds off: a one-hot lookup's chunks in one message, a LayerNorm's
    # gamma on its reader's message; otherwise every path exchanges in the same rounds.
    assert rows["crypten"]["rounds"] == rows["fast-matmul"]["rounds"] > rows["weight-masks"]["rounds"] > 0
    assert len({r["rounds"] for name, r in rows.items() if name not in ("crypten", "fast-matmul")}) == 1
    # The fast Beaver step, the overlap, the PRG and the exchange change only local work and the
    # order of waits: the parties exchange exactly the same messages as on the path before.
    assert rows["crypten"]["bytes"] == rows["fast-matmul"]["bytes"] > 0
    assert rows["weight-masks"]["bytes"] == rows["overlap-dealer"]["bytes"] == rows["aes-prg"]["bytes"]
    assert rows["aes-prg"]["bytes"] == rows["triple-streams"]["bytes"] == rows["fast-exchange"]["bytes"] > 0
    # LayerNorm's one opening of x - mean: fewer bytes, the same rounds
    assert 0 < rows["mpcformer"]["bytes"] < rows["fast-exchange"]["bytes"]
    # Owner operands: each weight matrix is sent once, one way, in the model's set-up (8 bytes per
    # ring element), so a forward sends only activation-sized data (tiny: its weights are mostly
    # the 30522 x 64 embedding table, which CrypTen's path opens both ways in every forward).
    from mpcformer.models.presets import preset_config

    c = preset_config("tiny")
    H, I = c.hidden_size, c.intermediate_size
    weight_elements = c.vocab_size * H + c.num_hidden_layers * (4 * H * H + 2 * H * I) + H * H + H * 2
    weight_elements += c.num_hidden_layers * 2 * H  # the LayerNorm gammas applied beside a layer's product
    assert rows["fast-matmul"]["bytes"] - rows["weight-masks"]["bytes"] > 0.5 * rows["crypten"]["bytes"]
    for path in ("weight-masks", "overlap-dealer", "aes-prg", "triple-streams", "fast-exchange", "mpcformer"):
        assert rows[path]["setup_bytes"] == 8 * weight_elements  # once per session instead
    assert rows["crypten"]["setup_bytes"] == 0  # sharing alone is local
    for r in rows.values():
        assert 0 < r["matmul_time_s"] < r["latency_s"]
    assert report["speedup_end_to_end"] == rows["crypten"]["latency_s"] / rows["mpcformer"]["latency_s"]
    assert report["speedup_overlap_alone"] == rows["weight-masks"]["latency_s"] / rows["overlap-dealer"]["latency_s"]
    assert report["speedup_exchange_alone"] == rows["triple-streams"]["latency_s"] / rows["fast-exchange"]["latency_s"]
    assert "| mpcformer |" in (out / "matmul_path.md").read_text()


def test_batching_bench_rejects_bad_batch_sizes(capsys):
    from mpcformer.bench import batching

    for bad in ("0,8", "one", ""):
        with pytest.raises(SystemExit) as err:
            batching.main(["--batch-sizes", bad])
        assert err.value.code == 2
        assert "batch sizes" in capsys.readouterr().err


def test_ray_overhead_summary_says_when_noise_hides_the_overhead():
    from mpcformer.bench.paired import Sample
    from mpcformer.bench.ray_overhead import summarize

    def runs(*latencies):
        return [Sample(x, x + 5.0, {}) for x in latencies]

    quiet = summarize({"local": runs(10.0, 10.4), "ray": runs(10.6, 10.5)})
    assert quiet["ray_overhead_per_forward"] == pytest.approx(0.05)
    assert quiet["ray_overhead_per_round"] == pytest.approx([0.06, 0.1 / 10.4])
    assert quiet["resolved"]  # both launchers moved < 10%: "under 10%" is decided
    noisy = summarize({"local": runs(10.0, 25.0), "ray": runs(15.0, 12.0)})
    assert noisy["ray_overhead_per_forward"] == pytest.approx(0.2)
    assert noisy["same_launcher_spread"]["local"] == pytest.approx(1.5)
    assert not noisy["resolved"]
    assert noisy["call_wall_s_median"] == {"local": 22.5, "ray": 18.5}
    assert not summarize({"local": runs(10.0), "ray": runs(10.2)})["resolved"]  # one round: noise unknown


def test_ray_bench_on_cuda_places_parties_and_dealer_on_one_gpu():
    from mpcformer.bench.runner import ray_group_config
    from mpcformer.cluster.party_group import plan_placement

    one_gpu_node = {"CPU": 16.0, "GPU": 1.0}
    group = ray_group_config(BenchConfig(launcher="ray", mpc=MPCConfig(device="cuda")))
    placement = plan_placement(group, [one_gpu_node])
    assert placement.use_gpu and [b["GPU"] for b in placement.bundles] == [0.3333] * 3  # dealer included
    assert sum(b["GPU"] for b in placement.bundles) <= one_gpu_node["GPU"]
    assert group.mpc.device == "cuda"
    # One GPU each when asked, and no GPU at all on CPU even where the cluster has GPUs.
    own = ray_group_config(BenchConfig(launcher="ray", gpus_per_actor=1.0, mpc=MPCConfig(device="cuda")))
    assert [b["GPU"] for b in plan_placement(own, [{"CPU": 16.0, "GPU": 4.0}]).bundles] == [1.0] * 3
    cpu = plan_placement(ray_group_config(BenchConfig(launcher="ray")), [one_gpu_node])
    assert not cpu.use_gpu and all("GPU" not in b for b in cpu.bundles)


def test_bench_cli_passes_the_device_and_matmul_switches_to_every_party(monkeypatch, tmp_path):
    import mpcformer.bench.runner as runner

    seen = {}

    def fake_run_bench(cfg, **_):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(runner, "run_bench", fake_run_bench)
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cuda", "--launcher", "ray", "--gpus-per-actor", "0.5", "--out", str(tmp_path)])
    assert seen["cfg"].mpc.device == "cuda" and seen["cfg"].gpus_per_actor == 0.5
    mpc = seen["cfg"].mpc
    assert mpc.reuse_weight_masks and mpc.fast_matmul and mpc.overlap_dealer and mpc.reuse_activation_masks  # defaults
    assert mpc.randomness == "os" and mpc.fast_exchange and mpc.stream_triples
    stock = [
        "--no-weight-masks", "--no-fast-matmul", "--no-overlap-dealer", "--crypten-randomness", "--no-stream-triples",
        "--no-fast-exchange", "--no-activation-masks",
    ]
    with pytest.raises(SystemExit):
        main(["bench", *stock, "--out", str(tmp_path)])
    mpc = seen["cfg"].mpc
    assert not mpc.reuse_weight_masks and not mpc.fast_matmul and not mpc.overlap_dealer and not mpc.reuse_activation_masks
    assert mpc.randomness != "os" and not mpc.fast_exchange and not mpc.stream_triples
    with pytest.raises(SystemExit):
        main(["bench", "--protocol", "crypten", "--out", str(tmp_path)])
    assert seen["cfg"].mpc == mpc.model_copy(update={"device": "cpu"})  # the profile: every switch off


@pytest.mark.timeout(900)
def test_protocol_crypten_says_so_and_costs_what_every_switch_off_costs(tmp_path):
    def bench(name: str, *flags: str) -> dict:
        out = tmp_path / name
        argv = ["bench", "--model", "tiny", "--seq-len", "8", "--approx", "exact", "--no-truncation-risk", *flags]
        assert main([*argv, "--out", str(out)]) == 0
        return json.loads((out / "bench.json").read_text())

    shipped = bench("crypten", "--protocol", "crypten")
    switches_off = bench(
        "switches", "--no-fast-matmul", "--no-weight-masks", "--no-overlap-dealer", "--no-stream-triples",
        "--no-fast-exchange", "--no-exact-truncation", "--no-activation-masks",
    )
    path = shipped["protocol_path"]
    assert path["profile"] == "crypten"
    assert path["owner_operands"] == "beaver triples" and path["elementwise_triples"] == "dealer requests"
    assert path["exchange"] == "all-reduce" and not path["dealer_overlap"] and path["matmul_kernel"] == "stock"
    assert path["randomness"].startswith("crypten seeds") and path["truncation"] == "crypten local division"
    assert switches_off["protocol_path"]["profile"] == "custom"  # OS randomness stays without --crypten-randomness
    ours, theirs = shipped["combinations"][0], switches_off["combinations"][0]
    assert (ours["rounds"], ours["bytes"]) == (theirs["rounds"], theirs["bytes"])
    assert (ours["dealer"]["rounds"], ours["dealer"]["bytes"]) == (theirs["dealer"]["rounds"], theirs["dealer"]["bytes"])
    assert {op: (c["rounds"], c["bytes"]) for op, c in ours["ops"].items()} == {
        op: (c["rounds"], c["bytes"]) for op, c in theirs["ops"].items()
    }


@pytest.mark.timeout(400)
def test_ray_launcher_runs_every_combination_on_one_cluster_and_relays_progress(monkeypatch):
    import ray

    starts = []
    real_init = ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **kw: (starts.append(kw.get("address")), real_init(*a, **kw))[1])
    events = []
    report = run_bench(
        BenchConfig(model="tiny", seq_len=8, approx=["exact", "quad+2quad"], launcher="ray", truncation_risk=False),
        party_progress=lambda name, event: events.append((name, event)),
    )
    assert starts == ["local"]  # one cluster for both combinations, shut down afterwards
    # The client party's progress reaches the driver from its Ray actor: warm-up, forward, each layer.
    for name in ("exact", "quad+2quad"):
        mine = [event for combo, event in events if combo == name]
        assert [e["label"] for e in mine if e["kind"] == "forward"] == ["warm-up", "forward 1/1"], name
        assert [e["done"] for e in mine if e["kind"] == "layer"] == [1, 2, 1, 2], name  # tiny: 2 layers
    assert not ray.is_initialized()
    combos = {c["approx"]: c for c in report["combinations"]}
    assert combos["quad+2quad"]["rounds"] < combos["exact"]["rounds"]
    assert report["environment"]["device"] == "cpu" and report["environment"]["gpu"] is None


@pytest.mark.timeout(400)
def test_a_party_killed_under_the_ray_launcher_is_one_line_and_exit_1(tmp_path, capsys):
    """The Ray launcher fails like the local one: the CLI names the party, exit 1, no traceback."""
    import os
    import signal
    import threading
    import time

    import ray

    killed = []

    def kill_the_client() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if ray.is_initialized():
                for actor in ray._private.state.actors().values():
                    if actor["State"] == "ALIVE" and actor["Name"].endswith("/party-1") and actor["Pid"]:
                        os.kill(actor["Pid"], signal.SIGKILL)
                        killed.append(actor["Name"])
                        return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_client, daemon=True)
    killer.start()
    code = main(["bench", "--model", "tiny", "--seq-len", "16", "--approx", "exact", "--launcher", "ray",
                 "--out", str(tmp_path / "bench")])
    killer.join(timeout=10)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert killed and code == 1, (killed, code, err)
    assert len(lines) == 1 and "party 1" in lines[0] and "Traceback" not in err, err
    assert not ray.is_initialized()


def _op(time_s: float, rounds: float, nbytes: float) -> dict:
    wan = project_latency(time_s, rounds, nbytes, NetworkProfile(bandwidth_bps=100e6, rtt_s=0.04))
    return {"time_s": time_s, "comm_time_s": 0.0, "rounds": rounds, "bytes": nbytes, "projected_latency_s": {"lan": time_s, "wan": wan}}


def test_report_shows_rounds_saved_and_the_wan_projection_per_operation():
    from mpcformer.bench.report import render_markdown

    def combo(name: str, rounds: float, saved: float | None) -> dict:
        return {
            "approx": name, "latency_s": 2.0, "comm_time_s": 0.5, "rounds": rounds, "bytes": 1e6, "speedup_vs_exact": None,
            "rounds_saved_vs_exact": saved, "projected_latency_s": {"lan": 2.0, "wan": 9.0},
            "ops": {"layernorm": _op(1.0, rounds, 1e6)},
        }

    report = {
        "settings": {"model": "tiny", "seq_len": 16, "batch_size": 1},
        "combinations": [combo("exact", 400, 0), combo("quad+2quad+ln:fit", 100, 300)],
        "environment": {"machine": "x86_64", "cpus": 2, "versions": {}},
        "profiles": {"wan": {"bandwidth_bps": 100e6, "rtt_s": 0.04}},
    }
    markdown = render_markdown(report)
    assert "| quad+2quad+ln:fit | 2.00 | 0.50 | 100 | 300 (75%) |" in markdown
    assert "| exact | 2.00 | 0.50 | 400 | 0 (0%) |" in markdown
    wan_table = markdown.split("## WAN projection per operation (s)")[1]
    assert f"| layernorm | {1.0 + 400 * 0.04 + 0.08:.2f} | {1.0 + 100 * 0.04 + 0.08:.2f} |" in wan_table
    report["combinations"][1]["rounds_saved_vs_exact"] = None  # no exact in the run
    assert "| 100 | - |" in render_markdown(report)
