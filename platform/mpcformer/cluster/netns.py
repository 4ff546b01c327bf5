"""Separate hosts on one machine: Ray nodes in network namespaces of their own, on a private bridge.

Each node of a :class:`NetnsCluster` is a Linux network namespace joined to a bridge by one veth
link, with its own address in 198.18.0.0/15 (the benchmarking range, never routed). Its Ray node
binds that address (``--node-ip-address``), so what two parties exchange really crosses two links:
it can be counted on them (:meth:`NetnsCluster.link_bytes`) and limited with ``tbf`` (``rate_mbit``,
both directions of every link; this kernel has no ``netem``, so latency stays emulated by
:mod:`mpcformer.mpc.network`).

    with NetnsCluster(NetnsConfig(nodes=3, rate_mbit=1000)) as cluster:
        subprocess.run(cluster.command(["mpcformer", "bench", "--launcher", "ray", "--role-resources"]),
                       env=cluster.driver_env(), check=True)

Layout of cluster ``ID`` (4 hex digits from ``secrets``), all names starting ``mpcfn-ID``:

- bridge ``mpcfn-ID-br`` (layer 2 only: the host has no address on it);
- node ``i``: namespace ``mpcfn-ID-n<i>``; veth ``mpcfn-ID-h<i>`` on the bridge, ``mpcfn0`` inside with
  198.18.S.<i+2>/24 (S from ``subnet``, else from the id);
- Ray: node 0 is the head (GCS port 6379 in its own namespace); nodes start one at a time, each
  started again (up to 3 times) when it misses Ray's 30 s registration deadline on a loaded
  machine. Node ``i`` offers one unit of the
  role resource of :data:`NODE_ROLES` ``[i]`` (dealer, owner, client; further nodes offer CPUs only),
  so a party group with ``role_resources`` lands STRICT_SPREAD, one role per node. Every node has its
  temp dir under ``/tmp/mpcfn-ID``; the cluster's token is the file ``/tmp/mpcfn-ID/token`` (mode 0600,
  ``RAY_AUTH_TOKEN_PATH``), never on a command line. ``GLOO_SOCKET_IFNAME=mpcfn0``: the host name
  resolves to no address inside a namespace, and gloo must bind the node's link.
- ``/tmp/mpcfn-ID/cluster.json`` records the cluster for ``attach`` and ``down``.

Drivers run inside a namespace (:meth:`NetnsCluster.command`, node 0 by default): a Ray driver
needs a raylet on its own address. Needs root (``ip netns``): :func:`netns_available` says why not.
Everything is torn down on exit, when a start fails and by :func:`teardown`: Ray (SIGTERM to each
``ray start --block``, then SIGKILL to any process still in one of the namespaces, by PID), the
namespaces (which takes their veth ends), the links, the bridge and the state dir;
:func:`leftovers` lists what is still there.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field, field_validator

from mpcformer.cluster.config import ROLE_RESOURCES
from mpcformer.config import StrictModel
from mpcformer.errors import UserError

__all__ = [
    "NetnsConfig", "NetnsCluster", "NetnsNode", "NetnsError", "LinkBytes", "NODE_ROLES", "NODE_IFNAME", "PREFIX",
    "netns_available", "teardown", "leftovers", "cluster_ids",
]

log = logging.getLogger(__name__)

#: Every namespace, link and state dir of ours starts with this (``mpcfn-<id>-...``).
PREFIX = "mpcfn"
#: The node's end of its link, the same name inside every namespace.
NODE_IFNAME = "mpcfn0"
#: RFC 2544's benchmarking range: 512 /24 subnets, none routed anywhere.
BENCHMARK_NET = ipaddress.ip_network("198.18.0.0/15")
#: Role of node i (head first): the key of its resource in ROLE_RESOURCES.
NODE_ROLES: tuple[str | int, ...] = ("dealer", 0, 1)
_ROLE_NAMES = {"dealer": "dealer", 0: "owner", 1: "client"}
GCS_PORT = 6379
_STATE_ROOT = Path("/tmp")
_RAY_BIN = Path(sys.executable).with_name("ray")
_STARTED = "Ray runtime started"
#: Asks the head, from inside its namespace, for the alive nodes (a driver must run there).
_NODES_SCRIPT = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + float(sys.argv[3])
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= int(sys.argv[2]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([{"ip": n["NodeManagerAddress"], "resources": n["Resources"]} for n in alive]))
"""


class NetnsError(UserError):
    """A namespace cluster could not be built or reached; the message names the step and the cause."""


class NetnsConfig(StrictModel):
    """A namespace cluster: how many nodes, which subnet, link rate limits, Ray resources, deadlines."""

    nodes: int = Field(default=3, ge=1, le=16, description="Ray nodes, each in its own namespace; node 0 is the head")
    subnet: str | None = Field(default=None, description="a /24 inside 198.18.0.0/15; None: chosen from the cluster id")
    rate_mbit: float | None = Field(default=None, gt=0, description="tbf limit on both directions of every link, Mbit/s")
    cpus_per_node: int = Field(default=1, ge=1, description="logical CPUs each Ray node offers")
    object_store_mb: int = Field(default=256, ge=80, description="Ray object store of each node, MB")
    start_timeout_s: float = Field(default=180.0, gt=0, description="deadline for every node to start and join")
    stop_timeout_s: float = Field(default=30.0, gt=0, description="grace for Ray to stop before its processes are killed")

    @field_validator("subnet")
    @classmethod
    def _benchmarking_subnet(cls, value: str | None) -> str | None:
        if value is None:
            return None
        net = ipaddress.ip_network(value)
        if net.version != 4 or net.prefixlen != 24 or not net.subnet_of(BENCHMARK_NET):
            raise ValueError(f"subnet must be a /24 inside {BENCHMARK_NET}, got {value}")
        return str(net)


@dataclass(frozen=True)
class NetnsNode:
    """One node: its namespace, its link's host end, its address and its Ray role."""

    index: int
    namespace: str
    host_if: str
    ip: str
    role: str  # dealer, owner, client or worker
    resources: dict[str, float]


@dataclass(frozen=True)
class LinkBytes:
    """Bytes a node sent and received on its link (layer 2, as the host end of the veth counts them)."""

    sent: int
    received: int

    @property
    def total(self) -> int:
        return self.sent + self.received

    def __sub__(self, other: "LinkBytes") -> "LinkBytes":
        return LinkBytes(self.sent - other.sent, self.received - other.received)


def _run(
    argv: list[str], what: str, timeout_s: float = 30.0, check: bool = True, env: dict[str, str] | None = None
) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NetnsError(f"{what}: {' '.join(argv)}: {err}") from err
    if check and done.returncode != 0:
        raise NetnsError(f"{what}: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:400]}")
    return done.stdout


def netns_available() -> str | None:
    """``None`` when this process can build namespace clusters, else the reason it cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    try:
        _run(["ip", "netns", "list"], "listing namespaces", timeout_s=10)
    except NetnsError as err:
        return f"ip netns is unavailable: {err}"
    return None


def _subnet_for(cluster_id: str) -> ipaddress.IPv4Network:
    subnets = list(BENCHMARK_NET.subnets(new_prefix=24))
    return subnets[int(cluster_id, 16) % len(subnets)]


class NetnsCluster:
    """Ray nodes in network namespaces on a private bridge (module doc); a context manager."""

    def __init__(self, config: NetnsConfig | None = None, cluster_id: str | None = None):
        self.config = config or NetnsConfig()
        self.id = cluster_id or secrets.token_hex(2)
        if not re.fullmatch(r"[0-9a-f]{4}", self.id):
            raise NetnsError(f"cluster id must be 4 hex digits, got {self.id!r}")
        self.name = f"{PREFIX}-{self.id}"
        self.state_dir = _STATE_ROOT / self.name
        self.bridge = f"{self.name}-br"
        self.subnet = ipaddress.ip_network(self.config.subnet) if self.config.subnet else _subnet_for(self.id)
        hosts = list(self.subnet.hosts())
        self.nodes = [
            NetnsNode(i, f"{self.name}-n{i}", f"{self.name}-h{i}", str(hosts[i + 1]), *self._role(i))
            for i in range(self.config.nodes)
        ]
        self._ray: list[subprocess.Popen] = []
        self._ray_pids: list[int] = []

    @staticmethod
    def _role(index: int) -> tuple[str, dict[str, float]]:
        if index >= len(NODE_ROLES):
            return "worker", {}
        role = NODE_ROLES[index]
        return _ROLE_NAMES[role], {ROLE_RESOURCES[role]: 1.0}

    # -- addresses and commands ----------------------------------------------------------------
    @property
    def head(self) -> NetnsNode:
        return self.nodes[0]

    @property
    def address(self) -> str:
        """The head's GCS address (``ray.init(address=...)``, ``RAY_ADDRESS``)."""
        return f"{self.head.ip}:{GCS_PORT}"

    @property
    def token_path(self) -> Path:
        return self.state_dir / "token"

    def node(self, role: str) -> NetnsNode:
        """The node of ``role`` (dealer, owner, client)."""
        for node in self.nodes:
            if node.role == role:
                return node
        raise KeyError(f"no node has role {role!r}; roles: {', '.join(n.role for n in self.nodes)}")

    def ray_env(self) -> dict[str, str]:
        """Environment of every Ray process and driver of this cluster: token from the file, gloo on the link."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_USAGE_STATS_ENABLED="0",
            GLOO_SOCKET_IFNAME=NODE_IFNAME,
        )
        return env

    def driver_env(self) -> dict[str, str]:
        """:meth:`ray_env` with ``RAY_ADDRESS``: jobs run by :meth:`command` join this cluster."""
        return {**self.ray_env(), "RAY_ADDRESS": self.address}

    def command(self, argv: list[str], node: int = 0) -> list[str]:
        """``argv`` run inside node ``node``'s namespace (with :meth:`driver_env`, a driver of this cluster)."""
        return ["ip", "netns", "exec", self.nodes[node].namespace, *argv]

    def link_bytes(self, node: NetnsNode | int) -> LinkBytes:
        """What ``node`` has sent and received on its link so far (the host end counts the other way round)."""
        node = self.nodes[node] if isinstance(node, int) else node
        stats = Path("/sys/class/net") / node.host_if / "statistics"
        return LinkBytes(sent=int((stats / "rx_bytes").read_text()), received=int((stats / "tx_bytes").read_text()))

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id, "address": self.address, "subnet": str(self.subnet), "bridge": self.bridge,
            "token_path": str(self.token_path), "rate_mbit": self.config.rate_mbit,
            "nodes": [asdict(node) for node in self.nodes], "ray_pids": self._ray_pids,
        }

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "NetnsCluster":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self, ray: bool = True) -> "NetnsCluster":
        """Build the network, then (``ray``) start a Ray node in each namespace and wait for all to join.
        Any failure tears down what was built and raises :class:`NetnsError`."""
        reason = netns_available()
        if reason:
            raise NetnsError(f"cannot build a namespace cluster: {reason}")
        if self.state_dir.exists() or any(cid == self.id for cid in cluster_ids()):
            raise NetnsError(f"cluster {self.id} exists already (mpcformer netns down --id {self.id})")
        try:
            self.state_dir.mkdir(mode=0o700)
            self._save()
            self._check_subnet_free()
            self._build_network()
            if ray:
                self._start_ray()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> list[str]:
        """Tear everything of this cluster down; returns what could not be removed (empty when clean)."""
        self._stop_ray()
        return teardown(self.id, ray_pids=self._ray_pids, stop_timeout_s=0.0)

    @classmethod
    def attach(cls, cluster_id: str) -> "NetnsCluster":
        """The running cluster ``cluster_id`` (from its ``cluster.json``), e.g. to run a command in it."""
        state = _STATE_ROOT / f"{PREFIX}-{cluster_id}" / "cluster.json"
        if not state.is_file():
            raise NetnsError(f"no namespace cluster {cluster_id} ({state} is missing); running: {cluster_ids() or 'none'}")
        data = json.loads(state.read_text())
        cluster = cls(NetnsConfig.model_validate(data["config"]), cluster_id)
        cluster._ray_pids = list(data.get("ray_pids", []))
        return cluster

    def _save(self) -> None:
        state = {**self.describe(), "config": self.config.model_dump()}
        (self.state_dir / "cluster.json").write_text(json.dumps(state, indent=2))

    # -- network ---------------------------------------------------------------------------------
    def _check_subnet_free(self) -> None:
        routes = _run(["ip", "-4", "route", "show", "table", "all"], "listing routes")
        for netns in _namespaces():
            routes += _run(["ip", "-n", netns, "-4", "route", "show"], f"listing routes of {netns}", check=False)
        if str(self.subnet) in routes:
            raise NetnsError(f"subnet {self.subnet} is in use on this machine; choose another (subnet / --subnet)")

    def _build_network(self) -> None:
        _run(["ip", "link", "add", self.bridge, "type", "bridge"], "creating the bridge")
        _run(["ip", "link", "set", self.bridge, "up"], "bringing the bridge up")
        for node in self.nodes:
            ns = ["ip", "-n", node.namespace]
            _run(["ip", "netns", "add", node.namespace], f"creating namespace {node.namespace}")
            _run(["ip", "link", "add", node.host_if, "type", "veth", "peer", "name", NODE_IFNAME, "netns", node.namespace],
                 f"creating the link of node {node.index}")
            _run(["ip", "link", "set", node.host_if, "master", self.bridge], f"bridging node {node.index}")
            _run(["ip", "link", "set", node.host_if, "up"], f"bringing up {node.host_if}")
            _run([*ns, "addr", "add", f"{node.ip}/{self.subnet.prefixlen}", "dev", NODE_IFNAME], f"addressing node {node.index}")
            _run([*ns, "link", "set", NODE_IFNAME, "up"], f"bringing up node {node.index}'s link")
            _run([*ns, "link", "set", "lo", "up"], f"bringing up node {node.index}'s loopback")
            if self.config.rate_mbit:
                self._limit(node)
        log.info("namespace cluster %s: %d nodes on %s", self.id, len(self.nodes), self.subnet)

    def _limit(self, node: NetnsNode) -> None:
        """``tbf`` at ``rate_mbit`` on both ends of the node's link (each end shapes what it sends)."""
        rate_bps = self.config.rate_mbit * 1e6
        # the bucket must hold a whole GSO packet (64 KiB) and 4 ms at the rate, else tbf drops instead of queueing
        burst = max(int(rate_bps / 8 * 0.004), 128 * 1024)
        qdisc = ["qdisc", "replace", "dev"]
        shape = ["root", "tbf", "rate", f"{rate_bps:.0f}bit", "burst", str(burst), "latency", "100ms"]
        _run(["tc", *qdisc, node.host_if, *shape], f"limiting the link into node {node.index}")
        _run(["ip", "netns", "exec", node.namespace, "tc", *qdisc, NODE_IFNAME, *shape],
             f"limiting the link out of node {node.index}")

    # -- Ray -------------------------------------------------------------------------------------
    def _start_ray(self) -> None:
        self.token_path.touch(mode=0o600)
        self.token_path.write_text(secrets.token_hex(32))
        env = self.ray_env()
        # one node at a time: on a loaded machine raylets starting together miss Ray's fixed 30 s
        # registration deadline; a node that misses it anyway is started again
        for node in self.nodes:
            role_args = ["--head", f"--port={GCS_PORT}", "--include-dashboard=false"] if node is self.head else [
                f"--address={self.address}"]
            self._start_with_retries(node, env, role_args)
        self._save()
        self._check_joined()

    def _start_with_retries(self, node: NetnsNode, env: dict[str, str], role_args: list[str], attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            self._start_node(node, env, role_args)
            try:
                self._wait_started([node])
                return
            except NetnsError as err:
                if attempt == attempts:
                    raise
                log.warning("namespace cluster %s: Ray did not start on node %d (attempt %d of %d), starting it "
                            "again: %s", self.id, node.index, attempt, attempts, str(err).splitlines()[0])
                self._kill_node(node)

    def _kill_node(self, node: NetnsNode) -> None:
        """Stop what a failed start left in the node's namespace (by PID) and forget its process."""
        process = self._ray.pop(node.index)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        for pid in _pids_in(node.namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.state_dir / f"n{node.index}", ignore_errors=True)

    def _start_node(self, node: NetnsNode, env: dict[str, str], role_args: list[str]) -> None:
        temp_dir = self.state_dir / f"n{node.index}"
        argv = self.command([
            str(_RAY_BIN), "start", "--block", *role_args, f"--node-ip-address={node.ip}", f"--temp-dir={temp_dir}",
            f"--num-cpus={self.config.cpus_per_node}", "--num-gpus=0", f"--resources={json.dumps(node.resources)}",
            f"--object-store-memory={self.config.object_store_mb * 1024 * 1024}", "--disable-usage-stats",
        ], node.index)
        with open(self._log_path(node), "wb") as out:
            process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)  # Ctrl-C reaches the CLI, which tears down
        self._ray.insert(node.index, process)  # by node: a restarted node takes its old place
        self._ray_pids.append(process.pid)

    def _log_path(self, node: NetnsNode) -> Path:
        return self.state_dir / f"ray-n{node.index}.log"

    def _wait_started(self, nodes: list[NetnsNode]) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        waiting = list(nodes)
        while waiting:
            for node in list(waiting):
                process = self._ray[node.index]
                if process.poll() is not None:
                    raise NetnsError(f"ray start on node {node.index} ({node.ip}) exited {process.returncode}:\n"
                                     f"{self._log_tail(node)}")
                if _STARTED in self._log_path(node).read_text(errors="replace"):
                    waiting.remove(node)
            if waiting and time.monotonic() > deadline:
                raise NetnsError(f"Ray did not start on node(s) {[n.index for n in waiting]} within "
                                 f"{self.config.start_timeout_s:.0f}s:\n{self._log_tail(waiting[0])}")
            time.sleep(0.5)

    def _check_joined(self) -> None:
        """Every node alive in the head's view, at its own address (asked by a driver in the head's namespace)."""
        timeout = self.config.start_timeout_s
        out = _run(self.command([sys.executable, "-c", _NODES_SCRIPT, self.address, str(len(self.nodes)), str(timeout)]),
                   "asking the head for its nodes", timeout_s=timeout + 60, env=self.driver_env())
        alive = sorted(node["ip"] for node in json.loads(out.strip().splitlines()[-1]))
        expected = sorted(node.ip for node in self.nodes)
        if alive != expected:
            raise NetnsError(f"the head sees nodes at {alive}, expected {expected}")
        log.info("namespace cluster %s: Ray nodes %s joined %s", self.id, alive, self.address)

    def _log_tail(self, node: NetnsNode, lines: int = 15) -> str:
        path = self._log_path(node)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _stop_ray(self) -> None:
        """SIGTERM to every ``ray start --block`` (which stops its node), workers first, then wait."""
        for process in reversed(self._ray):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + self.config.stop_timeout_s
        for process in self._ray:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        self._ray = []


# -- finding and removing what is ours -------------------------------------------------------------
def _namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], "listing namespaces", check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    out = _run(["ip", "-o", "link", "show"], "listing links", check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.count(":") >= 2]


def _ours(names: list[str], cluster_id: str | None) -> list[str]:
    pattern = re.compile(rf"{PREFIX}-{cluster_id or '[0-9a-f]{4}'}-")
    return [name for name in names if pattern.match(name)]


def cluster_ids() -> list[str]:
    """Ids of the namespace clusters present (namespaces, links or state dirs), running or half-removed."""
    names = _namespaces() + _links() + [p.name + "-" for p in _STATE_ROOT.glob(f"{PREFIX}-*")]
    return sorted({name.split("-")[1] for name in _ours(names, None)})


def _pids_in(namespace: str) -> list[int]:
    out = _run(["ip", "netns", "pids", namespace], f"listing processes in {namespace}", check=False)
    return [int(pid) for pid in out.split() if pid.isdigit()]


def _pids_naming(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]
    return False


def _cluster_pids(cluster_id: str) -> list[int]:
    """Every process in one of the cluster's namespaces or naming its state dir."""
    name = f"{PREFIX}-{cluster_id}"
    pids = {pid for ns in _ours(_namespaces(), cluster_id) for pid in _pids_in(ns)}
    pids.update(_pids_naming(str(_STATE_ROOT / name) + "/"))
    return sorted(pid for pid in pids if pid != os.getpid())


def teardown(cluster_id: str, ray_pids: list[int] | None = None, stop_timeout_s: float = 30.0) -> list[str]:
    """Remove cluster ``cluster_id``: Ray, its processes, namespaces, links, bridge, state dir.

    ``ray_pids`` (the ``ray start --block`` processes) get SIGTERM and ``stop_timeout_s`` to stop their
    nodes; then every process still in a namespace of the cluster, or naming its state dir, is
    killed by PID. Returns what is left (empty when clean), each as one line.
    """
    if not re.fullmatch(r"[0-9a-f]{4}", cluster_id):
        raise NetnsError(f"cluster id must be 4 hex digits, got {cluster_id!r}")
    state_dir = _STATE_ROOT / f"{PREFIX}-{cluster_id}"
    if ray_pids is None and (state_dir / "cluster.json").is_file():
        with contextlib.suppress(ValueError, OSError):
            ray_pids = json.loads((state_dir / "cluster.json").read_text()).get("ray_pids", [])
    ours = set(_cluster_pids(cluster_id))
    for pid in ray_pids or []:
        if pid in ours and _alive(pid):  # only PIDs still ours: a recorded PID may have been reused
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + stop_timeout_s
    while any(_alive(pid) for pid in ray_pids or [] if pid in ours) and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(3):  # processes may fork while we look
        pids = [pid for pid in _cluster_pids(cluster_id) if _alive(pid)]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    for namespace in _ours(_namespaces(), cluster_id):
        _run(["ip", "netns", "del", namespace], f"removing {namespace}", check=False)
    for link in _ours(_links(), cluster_id):  # the host ends (usually gone with their namespace), the bridge
        _run(["ip", "link", "del", link], f"removing {link}", check=False)
    shutil.rmtree(state_dir, ignore_errors=True)
    return leftovers(cluster_id)


def leftovers(cluster_id: str | None = None) -> list[str]:
    """What of cluster ``cluster_id`` (or of any of ours) is still there, one line each; empty when clean."""
    found = [f"namespace {n}" for n in _ours(_namespaces(), cluster_id)]
    found += [f"link {n}" for n in _ours(_links(), cluster_id)]
    for cid in [cluster_id] if cluster_id else cluster_ids():
        found += [f"process {pid}" for pid in _cluster_pids(cid) if _alive(pid)]
        state_dir = _STATE_ROOT / f"{PREFIX}-{cid}"
        if state_dir.exists():
            found.append(f"state dir {state_dir}")
    return found

