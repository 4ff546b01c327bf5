"""Benchmark report rendering: a markdown table and a per-operation stacked bar plot."""

from __future__ import annotations

from pathlib import Path

from mpcformer.mpc.costs import CATEGORIES

__all__ = ["render_markdown", "render_plot", "write_json_and_markdown"]


def write_json_and_markdown(out_dir: Path, stem: str, report: dict, markdown: str) -> None:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir`` and print the table and the paths."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(markdown)
    print(markdown + f"wrote {json_path} and {md_path}")


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f}"


def _saved(combo: dict) -> str:
    """Rounds saved against ``exact`` in the same run, with the share of exact's rounds."""
    saved = combo.get("rounds_saved_vs_exact")
    if saved is None:
        return "-"
    exact_rounds = combo["rounds"] + saved
    return f"{saved:,.0f} ({100 * saved / exact_rounds:.0f}%)" if exact_rounds else f"{saved:,.0f}"


def _per_operation_wan(report: dict) -> list[str]:
    """Per operation category: its WAN projection (its compute here + rounds x RTT + bytes / bandwidth)."""
    combos = report["combinations"]
    names = [c["approx"] for c in combos]
    lines = ["", "## WAN projection per operation (s)", "", "| operation | " + " | ".join(names) + " |"]
    lines.append("| --- |" + " ---: |" * len(names))
    for op in CATEGORIES:
        cells = []
        for c in combos:
            projected = c["ops"].get(op, {}).get("projected_latency_s")
            cells.append(f"{projected['wan']:.2f}" if projected else "-")
        if any(cell != "-" for cell in cells):
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return lines


def _setup(combo: dict) -> str:
    setup = combo.get("setup")
    return f"{setup['time_s']:.2f} / {_mb(setup['bytes'])}" if setup else "-"


def _truncation_line(combos: list[dict]) -> str:
    """What bench.json's ``truncation`` says: exact, or the expected share of corrupted sequences."""
    parts = []
    for c in combos:
        t = c.get("truncation") or {}
        if t.get("exact"):
            parts.append(f"{c['approx']}: exact")
        elif t.get("p_sequence_corrupted") is not None:
            parts.append(
                f"{c['approx']}: CrypTen's local division, {t['expected_corrupted_per_sequence']:.3g} corrupted "
                f"elements expected per sequence, {100 * t['p_sequence_corrupted']:.2g}% of sequences with one"
            )
        else:
            parts.append(f"{c['approx']}: CrypTen's local division, risk not measured")
    return "Truncation (an element off by 2^32 when the shares wrap): " + "; ".join(parts) + "."


def _protocol_line(path: dict) -> str:
    """What bench.json's ``protocol_path`` says, in one sentence."""
    return (
        f"Protocol: {path['profile']} (owner weights: {path['owner_operands']}; elementwise triples: "
        f"{path['elementwise_triples']}; dealer overlap: {'on' if path['dealer_overlap'] else 'off'}; matmul: "
        f"{path['beaver_matmul']}, {path['matmul_kernel']} kernel; openings: {path['exchange']}; randomness: "
        f"{path['randomness']}; truncation: {path['truncation']}; transport: {path.get('transport', 'tcp (cleartext)')})."
    )


def _placement_line(placement: dict) -> str:
    """Where the first combination's party group ran (Ray launcher), in one sentence."""
    actors = ", ".join(f"{a['who']} on {a['node_ip']}" for a in placement["actors"])
    return f"Placement: {placement['strategy']} ({actors}); transport between them: {placement.get('transport')}."


def render_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# mpcformer bench: {s['model']}, seq len {s['seq_len']}, batch {s['batch_size']}",
        "",
        "| approx | latency (s) | comm time (s) | rounds | rounds saved vs exact | MB sent | speed-up vs exact "
        "| LAN (s) | WAN (s) | model set-up, once (s / MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in report["combinations"]:
        speed = f"{c['speedup_vs_exact']:.2f}x" if c.get("speedup_vs_exact") else "-"
        proj = c["projected_latency_s"]
        lines.append(
            f"| {c['approx']} | {c['latency_s']:.2f} | {c['comm_time_s']:.2f} | {c['rounds']:,.0f} | {_saved(c)} | "
            f"{_mb(c['bytes'])} | {speed} | {proj['lan']:.2f} | {proj['wan']:.2f} | {_setup(c)} |"
        )
    lines += ["", "## Per operation (time s / rounds / MB)", ""]
    names = [c["approx"] for c in report["combinations"]]
    lines.append("| operation | " + " | ".join(names) + " |")
    lines.append("| --- |" + " ---: |" * len(names))
    for op in CATEGORIES:
        cells = []
        for c in report["combinations"]:
            o = c["ops"].get(op)
            cells.append(f"{o['time_s']:.2f} / {o['rounds']:,.0f} / {_mb(o['bytes'])}" if o else "-")
        if any(cell != "-" for cell in cells):
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines += _per_operation_wan(report)
    lines += [
        "",
        "Latency is one forward of a model already built in the session; building it (sharing the "
        "owner's weights and sending each under its reusable mask) is paid once per session: last column.",
        "",
        "LAN and WAN: the latency projected onto a link between the parties (the compute measured here, plus "
        "rounds x round-trip time plus bytes / bandwidth): "
        + "; ".join(f"{name} {p['bandwidth_bps'] / 1e6:,.0f} Mbit/s, {p['rtt_s'] * 1e3:g} ms RTT"
                    for name, p in report.get("profiles", {}).items())
        + ". Comm time is the part of the latency spent in exchanges on this machine.",
    ]
    lines += ["", _truncation_line(report["combinations"])]
    if report.get("protocol_path"):
        lines += ["", _protocol_line(report["protocol_path"])]
    placement = report["combinations"][0].get("placement")
    if placement:
        lines += ["", _placement_line(placement)]
    env = report["environment"]
    where = f"GPU: {env['gpu']}" if env.get("gpu") else "CPU only"
    lines += ["", f"Machine: {env['machine']}, {env['cpus']} CPUs, {where}; versions: {env['versions']}", ""]
    return "\n".join(lines)


def render_plot(report: dict, path: Path) -> None:
    """Stacked bars per operation category (time, rounds, MB), one bar per combination; the
    speed-up over ``exact`` above each time bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = report["combinations"]
    names = [c["approx"] for c in combos]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = ((axes[0], "time_s", "time (s)", 1.0), (axes[1], "rounds", "rounds", 1.0), (axes[2], "bytes", "MB", 1e-6))
    for ax, metric, label, scale in panels:
        bottom = [0.0] * len(combos)
        for op in CATEGORIES:
            values = [c["ops"].get(op, {}).get(metric, 0.0) * scale for c in combos]
            if any(values):
                ax.bar(names, values, bottom=bottom, label=op)
                bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylabel(label)
        ax.set_title(f"{label} by operation")
        ax.tick_params(axis="x", labelrotation=15)
    for x, c in enumerate(combos):
        if c.get("speedup_vs_exact"):
            axes[0].annotate(f"{c['speedup_vs_exact']:.2f}x", (x, c["latency_s"]), ha="center", va="bottom", fontsize=9)
    axes[2].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    s = report["settings"]
    fig.suptitle(f"{s['model']}, seq len {s['seq_len']}, batch {s['batch_size']} (speed-up vs exact above the time bars)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
