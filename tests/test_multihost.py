"""Parties on separate network stacks: a 3-node Ray cluster in network namespaces (`mpcformer netns`),
one node per role.

- `mpcformer bench --launcher ray --role-resources` puts the owner, the client and the dealer each on
  its own node and address, over TLS by default and over plain TCP with `--insecure-transport`; the
  bytes the client's link carries during the run match the client's cost ledger within 5% either way;
- a capture of the client's link (a raw socket on it) holds the share the client sent in the clear
  over TCP, and none of it over TLS (the positive control);
- `mpcformer infer` places its groups the same way;
- the cluster leaves no namespace, link or process behind.

Needs root (ip netns); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mpcformer.cluster.netns import NetnsCluster, NetnsConfig, leftovers, netns_available

UNAVAILABLE = netns_available()
pytestmark = [
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"namespace clusters unavailable here: {UNAVAILABLE}"),
    pytest.mark.timeout(1800),
]

TESTS = Path(__file__).resolve().parent
#: Seconds of an idle cluster whose link traffic (Ray's own) is the baseline subtracted from a run.
IDLE_S = 10.0


@pytest.fixture(scope="module")
def cluster():
    cluster = NetnsCluster(NetnsConfig(nodes=3)).up()
    try:
        yield cluster
    finally:
        left = cluster.down()
    assert left == [] and leftovers(cluster.id) == [], f"left behind: {left}"


def driver(cluster: NetnsCluster, argv: list[str], timeout_s: float = 900) -> subprocess.CompletedProcess:
    """``python argv...`` as a driver of the cluster, inside the head's namespace."""
    return subprocess.run(cluster.command([sys.executable, *argv]), env=cluster.driver_env(),
                          capture_output=True, text=True, timeout=timeout_s)


def idle_rate(cluster: NetnsCluster, node) -> float:
    """Bytes per second the node's link carries while no job runs (Ray's heartbeats, metrics)."""
    before, start = cluster.link_bytes(node), time.monotonic()
    time.sleep(IDLE_S)
    return (cluster.link_bytes(node) - before).total / (time.monotonic() - start)


@pytest.mark.parametrize("transport", ["tls", "tcp"])
def test_bench_runs_each_role_on_its_node_and_the_client_link_carries_its_ledger(cluster, tmp_path, transport):
    client = cluster.node("client")
    baseline = idle_rate(cluster, client)
    before, start = cluster.link_bytes(client), time.monotonic()
    done = driver(cluster, [
        "-m", "mpcformer.jobs.bench", "--launcher", "ray", "--role-resources", "--model", "tiny", "--seq-len", "64",
        "--batch-size", "2", "--approx", "quad+2quad", "--no-warmup", "--no-truncation-risk", "--out", str(tmp_path),
        *(["--insecure-transport"] if transport == "tcp" else []),
    ])
    link = (cluster.link_bytes(client) - before).total - baseline * (time.monotonic() - start)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    combo = report["combinations"][0]
    where = {actor["who"]: actor["node_ip"] for actor in combo["placement"]["actors"]}
    assert combo["placement"]["strategy"] == "STRICT_SPREAD"
    assert where == {"party 0": cluster.node("owner").ip, "party 1": client.ip, "dealer": cluster.node("dealer").ip}
    assert combo["placement"]["transport"] == transport
    assert report["protocol_path"]["transport"].startswith(transport)
    # the client's ledger: the forward and the session's model set-up (the client exchanges nothing with the dealer)
    ledger = combo["bytes"] + combo["setup"]["bytes"]
    assert ledger > 10e6  # enough that Ray's own traffic during the run cannot hide a mismatch
    print(f"{transport}: client link {link:,.0f} B, ledger {ledger:,.0f} B ({link / ledger - 1:+.2%}), "
          f"latency {combo['latency_s']:.2f} s")  # shown with -s / -rA
    assert abs(link - ledger) <= 0.05 * ledger, f"client link {link:,.0f} B, ledger {ledger:,.0f} B ({transport})"


class LinkCapture:
    """Every frame crossing a link's host end, read by a raw packet socket (a capture without tcpdump)."""

    def __init__(self, ifname: str):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE: keep up with bursts
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.frames.append(self.sock.recv(1 << 18))
            except socket.timeout:
                continue

    def __enter__(self) -> "LinkCapture":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sock.close()

    def data(self) -> bytes:
        return b"".join(self.frames)


def windows_found(data: bytes, secret: bytes, count: int = 16, width: int = 32) -> int:
    """How many of ``count`` evenly spaced ``width``-byte pieces of ``secret`` occur in ``data``."""
    step = (len(secret) - width) // (count - 1)
    return sum(secret[i * step:i * step + width] in data for i in range(count))


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_a_capture_of_the_client_link_holds_its_share_over_tcp_only(cluster, tmp_path, transport):
    out, share = tmp_path / "result.pickle", tmp_path / "share.bin"  # the nodes share this filesystem
    with LinkCapture(cluster.node("client").host_if) as capture:
        done = driver(cluster, [str(TESTS / "multihost_driver.py"), str(out), transport, "send_share", "50000", str(share)])
    assert done.returncode == 0, done.stderr[-4000:]
    result = pickle.loads(out.read_bytes())
    sent = share.read_bytes()
    assert len(sent) == 50000 * 8
    assert result["results"][0]["digest"] == result["results"][1]["digest"]  # it arrived intact either way
    assert result["placement"]["transport"] == transport
    assert len({a["node_ip"] for a in result["placement"]["actors"]}) == 3
    found = windows_found(capture.data(), sent)
    if transport == "tcp":
        assert found >= 12, f"only {found} of 16 pieces of the share in {len(capture.data()):,} captured bytes"
    else:
        assert found == 0, f"{found} pieces of the share in the clear over TLS"


def test_infer_places_owner_client_and_dealer_on_their_nodes(cluster, tmp_path):
    from mpcformer.data import write_synthetic_sentiment

    data = write_synthetic_sentiment(tmp_path / "data", num_train=4, num_dev=8, seed=3)
    out = tmp_path / "out"
    done = driver(cluster, [
        "-m", "mpcformer.jobs.infer", "-v", "--config", "infer-tiny", "--data", str(data), "--limit", "4",
        "--max-length", "16", "--out", str(out), "--set", "group.role_resources=true",
    ])
    assert done.returncode == 0, done.stderr[-4000:]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    started = [line for line in done.stderr.splitlines()
               if re.search(r"party group \S+ running \(STRICT_SPREAD, tls\)", line)]
    assert started, done.stderr[-4000:]
    ips = re.findall(r"'node_ip': '([0-9.]+)'", started[0])
    assert sorted(ips) == sorted(node.ip for node in cluster.nodes)
