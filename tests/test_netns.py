"""Namespace clusters without Ray: each node its own network stack on a private bridge, bytes counted
on its link, tbf on both ends, and nothing left behind by a teardown, a failed start or `netns down`.

Needs root (ip netns); skipped with the reason otherwise. The Ray side is tests/test_multihost.py (slow).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mpcformer.cluster.netns import (
    NODE_IFNAME, NetnsCluster, NetnsConfig, NetnsError, leftovers, netns_available,
)

UNAVAILABLE = netns_available()
needs_netns = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"namespace clusters unavailable here: {UNAVAILABLE}")

#: Counts what one connection brings to ip:port (the receiver, inside its namespace).
RECEIVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
server.settimeout(60)
conn, _ = server.accept()
total = 0
while chunk := conn.recv(1 << 16):
    total += len(chunk)
print(total, flush=True)
"""
SENDER = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60) as conn:
    conn.sendall(bytes(int(sys.argv[3])))
"""


def ip_text(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=True).stdout


def send(cluster: NetnsCluster, src: int, dst: int, nbytes: int) -> int:
    """Send ``nbytes`` from node ``src`` to node ``dst`` over TCP; what the receiver counted."""
    port = "7070"
    receiver = subprocess.Popen(cluster.command([sys.executable, "-c", RECEIVER, cluster.nodes[dst].ip, port], dst),
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(cluster.command([sys.executable, "-c", SENDER, cluster.nodes[dst].ip, port, str(nbytes)], src),
                       check=True, timeout=120)
        out, _ = receiver.communicate(timeout=120)
        return int(out.strip())
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()


def test_the_command_line_keeps_cluster_options_apart_from_the_command():
    import argparse

    from mpcformer.jobs import netns

    parser = argparse.ArgumentParser()
    netns.add_arguments(parser)
    run = parser.parse_args(["run", "--nodes", "4", "--rate-mbit", "1000", "--", "mpcformer", "bench", "--launcher", "ray"])
    assert (run.nodes, run.rate_mbit, netns._command(run)) == (4, 1000.0, ["mpcformer", "bench", "--launcher", "ray"])
    down = parser.parse_args(["down", "--id", "ab12"])
    assert (down.action, down.id, down.all) == ("down", "ab12", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["down"])  # which cluster must be said


def test_subnet_must_be_a_24_of_the_benchmarking_range():
    assert NetnsConfig(subnet="198.19.7.0/24").subnet == "198.19.7.0/24"
    for bad in ("10.0.0.0/24", "198.18.0.0/16", "198.20.1.0/24"):
        with pytest.raises(ValueError, match="198.18.0.0/15"):
            NetnsConfig(subnet=bad)


@needs_netns
def test_nodes_have_their_own_stacks_links_count_their_bytes_and_teardown_leaves_nothing():
    cluster = NetnsCluster(NetnsConfig(nodes=2, rate_mbit=200)).up(ray=False)
    try:
        names = ip_text("netns", "list")
        for node in cluster.nodes:
            assert node.namespace in names
            assert f"inet {node.ip}/24" in ip_text("-n", node.namespace, "-4", "addr", "show", NODE_IFNAME)
            assert node.ip not in ip_text("-4", "addr", "show")  # not an address of the host's stack
            # tbf on both ends: the host end shapes what goes in, the node's end what comes out
            assert "tbf" in subprocess.run(["tc", "qdisc", "show", "dev", node.host_if], capture_output=True,
                                           text=True, check=True).stdout
            inside = subprocess.run(cluster.command(["tc", "qdisc", "show", "dev", NODE_IFNAME], node.index),
                                    capture_output=True, text=True, check=True).stdout
            assert "tbf" in inside and "200Mbit" in inside
        nbytes = 4_000_000
        before = [cluster.link_bytes(node) for node in cluster.nodes]
        assert send(cluster, 0, 1, nbytes) == nbytes
        sent, received = cluster.link_bytes(0) - before[0], cluster.link_bytes(1) - before[1]
        # payload plus TCP/IP headers (a few %), counted once by the sender's link and once by the receiver's
        assert nbytes <= sent.sent <= 1.05 * nbytes
        assert nbytes <= received.received <= 1.05 * nbytes
        # a process left running in a namespace is killed by the teardown
        straggler = subprocess.Popen(cluster.command(["sleep", "600"], 1))
    finally:
        left = cluster.down()
    assert left == [] and leftovers(cluster.id) == []
    assert straggler.wait(timeout=10) != 0
    assert cluster.bridge not in ip_text("-o", "link", "show")
    assert not any(node.namespace in ip_text("netns", "list") for node in cluster.nodes)


@needs_netns
def test_a_failed_start_removes_what_it_built(monkeypatch):
    def no_ray(self):
        raise NetnsError("ray would not start")

    monkeypatch.setattr(NetnsCluster, "_start_ray", no_ray)
    cluster = NetnsCluster(NetnsConfig(nodes=2))
    with pytest.raises(NetnsError, match="would not start"):
        cluster.up()
    assert leftovers(cluster.id) == []


@needs_netns
def test_netns_down_removes_a_cluster_left_running():
    cluster = NetnsCluster(NetnsConfig(nodes=2)).up(ray=False)
    try:
        done = subprocess.run([sys.executable, "-m", "mpcformer.jobs.netns", "down", "--id", cluster.id],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert leftovers(cluster.id) == []
    finally:
        cluster.down()


@needs_netns
def test_a_second_cluster_with_the_same_id_is_refused():
    cluster = NetnsCluster(NetnsConfig(nodes=1)).up(ray=False)
    try:
        with pytest.raises(NetnsError, match="exists already"):
            NetnsCluster(NetnsConfig(nodes=1), cluster.id).up(ray=False)
        assert any(cluster.nodes[0].namespace in line for line in leftovers(cluster.id))  # the first one is intact
    finally:
        cluster.down()
    assert leftovers(cluster.id) == []
