"""A party group: N MPC party actors plus the dealer, placed together, joined in one MPC session.

    with PartyGroup(PartyGroupConfig(world_size=2), name="infer-0") as group:   # start()
        owner_out, client_out = group.run([PartyCall(owner_fn, (path,)), PartyCall(client_fn, (ids,))])
    # shutdown(): the dealer ended, every actor killed, the placement group removed

Lifecycle (Ray Train's backend pattern, plain functions shipped to actors):

1. place: one placement-group bundle per party and one for the dealer. Strategy STRICT_SPREAD (each
   actor on its own node) when the cluster has the nodes, else PACK (``strategy: auto``). Parties get
   one GPU each when the cluster has enough GPUs (they then compute on CUDA), else CPUs. With
   ``role_resources`` each bundle also asks for one unit of its role's custom resource
   (:data:`ROLE_RESOURCES`), so the owner, the client and the dealer run only on nodes that offer
   it (e.g. KubeRay worker groups that mount only that role's volumes). A group the
   cluster cannot place raises :class:`PlacementError` after ``placement_timeout_s``, never hangs.
2. spawn the actors in their bundles; 3. rendezvous: party 0 publishes ``tcp://<node IP>:<free
   port>``, the dealer and every party join it within ``mpc.timeout_s``. The transport
   (``mpc.transport``) is chosen here: ``auto`` means TLS when the actors are on more than one
   node address, else gloo over TCP. TLS needs the session's certificates: from
   ``mpc.credentials_dir`` (mounted on every node), else issued for the group into a private
   directory on the driver's filesystem (seen by the actors only where the nodes share it, as the
   namespace nodes of :mod:`mpcformer.cluster.netns` do) and removed at shutdown. Only the
   directory's path reaches the actors.
4. ``run``: each party runs ``fn(rank, *args, **kwargs)`` inside the session; ``fn`` must be a
   registered party operation (:mod:`mpcformer.operations`): the party receives its name, never
   its code, and refuses anything unregistered. The first party error,
   a dead actor, the dealer leaving, or the ``run_timeout_s`` deadline fails the group fast with
   :class:`GroupFailure` naming who failed and why; the group is torn down before it is raised.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mpcformer.cluster.config import ROLE_RESOURCES, PartyGroupConfig
from mpcformer.errors import PartyFailure, UserError
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.launcher import PartyProgress
from mpcformer.operations import OperationRefused, operation_name

__all__ = [
    "PartyCall", "PartyGroup", "GroupFailure", "PlacementError", "Placement", "plan_placement", "run_on_party_group",
    "RayLauncher", "describe_placement",
]

log = logging.getLogger(__name__)

#: Extra seconds the driver allows on top of the MPC deadline when waiting for a rendezvous.
_JOIN_SLACK_S = 30.0
#: Seconds to wait for a ping when diagnosing a failed group.
_PING_TIMEOUT_S = 3.0
#: Seconds between two polls of the parties' progress events while a run is waiting.
_PROGRESS_POLL_S = 0.5



class PlacementError(UserError):
    """The cluster cannot place the party group; the message says what was needed and what to do."""


class GroupFailure(PartyFailure):
    """A party or the dealer of a Ray party group died, stalled or raised; the group has been torn down."""

    def __init__(
        self, group: str, who: str, cause: str, states: dict[str, str] | None = None, retryable: bool = True,
        user_message: str | None = None,
    ):
        self.group, self.who, self.cause, self.states = group, who, cause, dict(states or {})
        self.retryable = retryable  # False when a party raised UserError or refused the operation
        self.user_message = user_message  # the party's own UserError message (bad input), else None
        state_text = "; ".join(f"{name}: {state}" for name, state in self.states.items())
        super().__init__(who, cause, f"party group {group}: {who} failed: {cause}" + (f" [{state_text}]" if state_text else ""))


@dataclass(frozen=True)
class PartyCall:
    """What one party runs: ``fn(rank, *args, **kwargs)``; ``fn`` must be a registered party operation
    (:func:`mpcformer.operations.party_operation`)."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """A resolved placement: strategy, bundles (parties first, then the dealer), whether GPUs are used."""

    strategy: str
    bundles: list[dict[str, float]]
    use_gpu: bool


def _alive_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _fits(node: dict[str, float], bundle: dict[str, float]) -> bool:
    return all(node.get(key, 0.0) >= amount for key, amount in bundle.items())


def plan_placement(config: PartyGroupConfig, nodes: list[dict[str, float]] | None = None) -> Placement:
    """Resolve ``use_gpu: auto`` and ``strategy: auto`` against the cluster's nodes (total resources).

    GPUs are used when the cluster has ``world_size * gpus_per_party`` (+ the dealer's) GPUs.
    STRICT_SPREAD is chosen when at least ``world_size + 1`` alive nodes can each hold a bundle and
    ``world_size`` of them a party bundle; otherwise PACK.
    """
    nodes = _alive_nodes() if nodes is None else nodes
    n = config.world_size
    has_dealer = config.mpc.dealer == "ttp"
    dealer_gpus = config.gpus_for_dealer if config.gpus_for_dealer is not None else config.gpus_per_party
    gpus_needed = n * config.gpus_per_party + (dealer_gpus if has_dealer else 0.0)
    use_gpu = config.use_gpu
    if use_gpu == "auto":
        use_gpu = sum(node.get("GPU", 0.0) for node in nodes) >= gpus_needed
    party = {"CPU": config.cpus_per_party, **({"GPU": config.gpus_per_party} if use_gpu else {})}
    dealer = {"CPU": config.cpus_for_dealer, **({"GPU": dealer_gpus} if use_gpu and dealer_gpus > 0 else {})}
    parties = [dict(party) for _ in range(n)]
    if config.role_resources:
        for rank, bundle in enumerate(parties):
            bundle[ROLE_RESOURCES[rank]] = 1.0
        dealer[ROLE_RESOURCES["dealer"]] = 1.0
    bundles = parties + ([dealer] if has_dealer else [])
    strategy = config.strategy
    if strategy == "auto":
        party_nodes = [sum(_fits(node, bundle) for node in nodes) for bundle in parties]
        any_nodes = sum(any(_fits(node, bundle) for bundle in bundles) for node in nodes)
        enough = min(party_nodes) >= (1 if config.role_resources else n)
        strategy = "STRICT_SPREAD" if enough and any_nodes >= len(bundles) else "PACK"
    return Placement(strategy=strategy, bundles=bundles, use_gpu=bool(use_gpu))


def _placement_error(name: str, placement: Placement, timeout_s: float) -> str:
    nodes = _alive_nodes()
    total, free = ray.cluster_resources(), ray.available_resources()
    need_cpu = sum(b.get("CPU", 0.0) for b in placement.bundles)
    need_gpu = sum(b.get("GPU", 0.0) for b in placement.bundles)
    spread = placement.strategy in ("STRICT_SPREAD", "SPREAD")
    where = f"{len(placement.bundles)} distinct nodes" if placement.strategy == "STRICT_SPREAD" else "the cluster"
    hint = "set strategy: PACK (all parties on one machine), add nodes" if spread else "add nodes or resources"
    return (
        f"could not place party group {name} ({len(placement.bundles)} actors, strategy {placement.strategy}) "
        f"within {timeout_s:.0f}s: it needs {need_cpu:g} CPUs and {need_gpu:g} GPUs on {where} "
        f"(bundles {placement.bundles}); the cluster has {len(nodes)} alive node(s), "
        f"{total.get('CPU', 0):g} CPUs ({free.get('CPU', 0):g} free), {total.get('GPU', 0):g} GPUs "
        f"({free.get('GPU', 0):g} free). Fix: {hint}, or lower cpus_per_party / use fewer party groups."
    )


def _warn_if_cluster_too_small(name: str, placement: Placement, timeout_s: float) -> None:
    """Say at once when the cluster's total resources cannot hold the group (an autoscaler may add nodes)."""
    total = ray.cluster_resources()
    for resource in sorted({key for bundle in placement.bundles for key in bundle}):
        needed = sum(b.get(resource, 0.0) for b in placement.bundles)
        if needed > total.get(resource, 0.0):
            log.warning(
                "party group %s needs %g %ss but the cluster has %g; waiting up to %.0fs for nodes to join",
                name, needed, resource, total.get(resource, 0.0), timeout_s,
            )


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, ray.exceptions.RayTaskError) and isinstance(err.cause, UserError)


def _is_refused(err: BaseException) -> bool:
    return isinstance(err, ray.exceptions.RayTaskError) and isinstance(err.cause, OperationRefused)


def _describe_error(err: BaseException) -> str:
    """One readable line for a Ray error: the party's own exception, or how the actor died."""
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = err.cause if err.cause is not None else err
        text = f"{type(cause).__name__}: {cause}"
    elif isinstance(err, ray.exceptions.RayActorError):
        text = f"actor died ({type(err).__name__}: {str(err).strip().splitlines()[0]})"
    else:
        text = f"{type(err).__name__}: {err}"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:3])[:600]


def _drain(refs: list[Any], timeout_s: float = 2.0) -> None:
    """Collect the errors of calls left running on a torn-down group, so Ray does not report them
    as unhandled; the failure has already been reported once."""
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in refs:
        try:
            ray.get(ref, timeout=0)
        except Exception:
            pass


class PartyGroup:
    """``world_size`` party actors plus the dealer in one placement group and one MPC session."""

    def __init__(self, config: PartyGroupConfig | None = None, name: str | None = None):
        self.config = config or PartyGroupConfig()
        self.name = f"{name or 'mpcformer'}-{uuid.uuid4().hex[:6]}"
        self.placement: Placement | None = None
        self.actors_info: list[dict[str, Any]] = []
        self.transport: dict[str, Any] = {}  # the session's transport and credentials dir, chosen at start
        self._credentials_dir: str | None = None  # issued by this group, removed at shutdown
        self._pg = None
        self._parties: list[Any] = []
        self._dealer = None
        self._dealer_ref = None
        self._open = False
        self._failed = False
        self._stopped = False  # set by shutdown(): a group is started at most once
        self._lock = threading.RLock()

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "PartyGroup":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @property
    def is_running(self) -> bool:
        return self._open

    def start(self) -> "PartyGroup":
        """Place, spawn and join; on any failure tear everything down and raise."""
        if self._open:
            return self
        try:
            for phase in (self._place, self._spawn, self._join):
                self._check_not_stopped()
                phase()
        except BaseException:
            self.shutdown()
            raise
        log.info("party group %s running (%s, %s): %s", self.name, self.placement.strategy,
                 self.transport.get("transport"), self.actors_info)
        return self

    def _check_not_stopped(self) -> None:
        if self._stopped:
            raise GroupFailure(self.name, "group", "shut down while starting (the job is stopping)")

    def _place(self) -> None:
        self.placement = plan_placement(self.config)
        _warn_if_cluster_too_small(self.name, self.placement, self.config.placement_timeout_s)
        with self._lock:  # a concurrent shutdown() removes what is created here
            self._check_not_stopped()
            pg = self._pg = placement_group(self.placement.bundles, strategy=self.placement.strategy, name=self.name)
        if not pg.wait(timeout_seconds=self.config.placement_timeout_s):
            self._check_not_stopped()
            raise PlacementError(_placement_error(self.name, self.placement, self.config.placement_timeout_s))

    def _spawn(self) -> None:
        mpc = self.config.mpc.model_dump()
        n = self.config.world_size
        with self._lock:  # a concurrent shutdown() kills every actor created here
            self._check_not_stopped()
            self._create_actors(mpc, n)
        refs = {self._who(rank): actor.describe.remote() for rank, actor in enumerate(self._actors())}
        info = self._await(refs, "actor start-up", self.config.startup_timeout_s, watch_dealer=False)
        self.actors_info = [info[self._who(rank)] for rank in range(len(refs))]

    def _create_actors(self, mpc: dict[str, Any], n: int) -> None:
        from mpcformer.actors.dealer import DealerActor
        from mpcformer.actors.party import PartyActor

        for rank, bundle in enumerate(self.placement.bundles):
            options = dict(
                num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0.0),
                resources={key: amount for key, amount in bundle.items() if key not in ("CPU", "GPU")},
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=rank),
            )
            if rank < n:
                party = PartyActor.options(name=f"{self.name}/party-{rank}", **options)
                self._parties.append(party.remote(rank, n, mpc, self.name))
            else:
                self._dealer = DealerActor.options(name=f"{self.name}/dealer", **options).remote(n, mpc, self.name)

    def _choose_transport(self) -> dict[str, Any]:
        """``mpc.transport`` resolved against where the actors are (module doc, step 3)."""
        mpc = self.config.mpc
        spread = len({info.get("node_ip") for info in self.actors_info}) > 1
        transport = mpc.transport if mpc.transport != "auto" else ("tls" if spread else "tcp")
        if transport == "tcp":
            return {"transport": "tcp"}
        credentials_dir = mpc.credentials_dir
        if credentials_dir is None:
            import tempfile

            from mpcformer.mpc.credentials import issue_credentials

            with self._lock:
                self._check_not_stopped()
                self._credentials_dir = tempfile.mkdtemp(prefix="mpcformer-tls-")
            credentials_dir = str(issue_credentials(self._credentials_dir, ranks=len(self._actors())))
        return {"transport": "tls", "credentials_dir": credentials_dir}

    def _join(self) -> None:
        self.transport = self._choose_transport()
        ref = self._parties[0].rendezvous_address.remote()
        rendezvous = self._await({"party 0": ref}, "publishing the rendezvous address", self.config.mpc.timeout_s)["party 0"]
        if self._dealer is not None:
            self._dealer_ref = self._dealer.serve.remote(rendezvous, self.transport)
        refs = {self._who(rank): party.open.remote(rendezvous, self.transport) for rank, party in enumerate(self._parties)}
        self._await(refs, f"joining the MPC session at {rendezvous}", self.config.mpc.timeout_s + _JOIN_SLACK_S)
        self._open = True

    def run(
        self, calls: Sequence[PartyCall], timeout_s: float | None = None, on_progress: PartyProgress | None = None
    ) -> list[Any]:
        """Run ``calls[rank]`` on every party inside the session; return the results by rank.

        Raises :class:`GroupFailure` (after tearing the group down) on the first party error, a dead
        or stalled actor, the dealer leaving, or the deadline ``timeout_s`` (default ``run_timeout_s``).
        ``on_progress(rank, event)`` receives the parties' progress events (polled every
        :data:`_PROGRESS_POLL_S`), as :func:`mpcformer.mpc.launcher.run_local` relays them.
        """
        if not self._open:
            raise RuntimeError(f"party group {self.name} is not running (call start() first)")
        if len(calls) != self.config.world_size:
            raise ValueError(f"run needs one PartyCall per party ({self.config.world_size}), got {len(calls)}")
        names = [operation_name(call.fn) for call in calls]  # the parties receive names, never code
        refs = {
            self._who(rank): party.run.remote(name, tuple(call.args), dict(call.kwargs))
            for rank, (party, name, call) in enumerate(zip(self._parties, names, calls))
        }
        poll = None if on_progress is None else (lambda: self._relay_progress(on_progress))
        results = self._await(refs, "run", timeout_s or self.config.run_timeout_s, poll=poll)
        return [results[self._who(rank)] for rank in range(self.config.world_size)]

    def _relay_progress(self, on_progress: PartyProgress) -> None:
        """Hand on what each party reported since the last poll; a party that cannot answer is
        skipped (the wait in :meth:`_await` diagnoses dead or stalled parties, not this)."""
        refs = {party.drain_progress.remote(): rank for rank, party in enumerate(self._parties)}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=_PING_TIMEOUT_S)
        for ref in sorted(ready, key=refs.__getitem__):
            try:
                events = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - progress is best effort
                log.debug("party %d: no progress events: %s", refs[ref], err)
                continue
            for event in events:
                on_progress(refs[ref], event)

    def shutdown(self) -> None:
        """End the session (the dealer exits), kill every actor, remove the placement group.

        Idempotent and thread-safe (the job's main thread may stop a group a worker thread runs).
        """
        with self._lock:
            self._stopped = True
            self._shutdown_locked()

    def _shutdown_locked(self) -> None:
        try:
            if self._open and not self._failed:
                self._close_session()
        finally:
            for actor in self._actors():
                try:
                    ray.kill(actor, no_restart=True)
                except Exception as err:  # already dead is fine
                    log.debug("kill %s: %s", actor, err)
            if self._pg is not None:
                try:
                    remove_placement_group(self._pg)
                except Exception as err:
                    log.warning("party group %s: could not remove its placement group: %s", self.name, err)
            self._pg, self._parties, self._dealer, self._dealer_ref, self._open = None, [], None, None, False
            self._failed = False
            if self._credentials_dir is not None:
                import shutil

                shutil.rmtree(self._credentials_dir, ignore_errors=True)
                self._credentials_dir = None

    def _close_session(self) -> None:
        self._open = False
        refs = [party.close.remote() for party in self._parties]
        refs += [self._dealer_ref] if self._dealer_ref is not None else []
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=self.config.shutdown_timeout_s)
        if pending:
            log.warning(
                "party group %s: %d of %d parties/dealer did not leave the session within %.0fs; killing them",
                self.name, len(pending), len(refs), self.config.shutdown_timeout_s,
            )

    # -- waiting and failing fast ------------------------------------------------------------------
    def _actors(self) -> list[Any]:
        return self._parties + ([self._dealer] if self._dealer is not None else [])

    def _who(self, rank: int) -> str:
        return "dealer" if rank == self.config.world_size else f"party {rank}"

    def _await(
        self, refs: dict[str, Any], what: str, timeout_s: float | None, watch_dealer: bool = True,
        poll: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Wait for every ref; fail fast on the first error, on the dealer leaving, or at the deadline.

        ``poll`` (progress relay) runs after every wake-up, at least every :data:`_PROGRESS_POLL_S`.
        """
        pending = {ref: who for who, ref in refs.items()}
        dealer_ref = self._dealer_ref if watch_dealer else None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        results: dict[str, Any] = {}
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            wait_s = remaining
            if poll is not None:
                wait_s = _PROGRESS_POLL_S if remaining is None else min(_PROGRESS_POLL_S, remaining)
            watched = list(pending) + ([dealer_ref] if dealer_ref is not None else [])
            ready, _ = ray.wait(watched, num_returns=1, timeout=wait_s)
            if poll is not None:
                poll()
            if not ready:
                if deadline is None or time.monotonic() < deadline:  # only a poll interval passed
                    continue
                raise self._fail(", ".join(pending.values()), f"no answer to {what} within {timeout_s:.0f}s", list(pending))
            if dealer_ref is not None and ready[0] == dealer_ref:
                raise self._fail("dealer", self._dealer_exit_cause(what), list(pending))
            who = pending.pop(ready[0])
            try:
                results[who] = ray.get(ready[0])
            except Exception as err:
                cause = f"during {what}: {_describe_error(err)}"
                user_message = str(err.cause) if _is_user_error(err) else None
                retryable = user_message is None and not _is_refused(err)
                raise self._fail(who, cause, list(pending), retryable, user_message) from err
        return results

    def _dealer_exit_cause(self, what: str) -> str:
        try:
            ray.get(self._dealer_ref)
            return f"left the MPC session during {what} (a party closed or its connection dropped)"
        except Exception as err:
            return f"during {what}: {_describe_error(err)}"

    def _fail(
        self, who: str, cause: str, pending: list[Any], retryable: bool = True, user_message: str | None = None
    ) -> GroupFailure:
        """Diagnose every actor (alive / dead / unresponsive), tear the group down, build the error.

        When the reporting party is alive but another actor is dead or unresponsive, that actor is
        named as the one that failed (the reporter only saw its peer vanish or time out).
        """
        self._failed = True
        pending = pending + ([self._dealer_ref] if self._dealer_ref is not None else [])
        states = self._diagnose()
        suspects = [name for name, state in states.items() if state != "alive"]
        if suspects and states.get(who) == "alive" and user_message is None:
            cause = f"{states[suspects[0]]}; {who} reported: {cause}"
            who = ", ".join(suspects)
        failure = GroupFailure(self.name, who, cause, states, retryable, user_message)
        log.warning("%s", failure)
        self.shutdown()
        _drain(pending)
        return failure

    def _diagnose(self) -> dict[str, str]:
        refs = {self._who(rank): actor.ping.remote() for rank, actor in enumerate(self._actors())}
        ray.wait(list(refs.values()), num_returns=len(refs), timeout=_PING_TIMEOUT_S)
        states = {}
        for who, ref in refs.items():
            try:
                ray.get(ref, timeout=0)
                states[who] = "alive"
            except ray.exceptions.GetTimeoutError:
                states[who] = f"unresponsive for {_PING_TIMEOUT_S:.0f}s (stalled)"
            except Exception as err:
                states[who] = "dead" if isinstance(err, ray.exceptions.RayActorError) else _describe_error(err)
        return states


@dataclass(frozen=True)
class RayLauncher:
    """Parties and the dealer as Ray actors of a fresh party group per call (:func:`run_on_party_group`);
    the :class:`mpcformer.mpc.launcher.Launcher` for Ray. ``placements`` collects where each call's
    group ran (:func:`describe_placement`), oldest first."""

    group_config: PartyGroupConfig
    placements: list[dict[str, Any]] = field(default_factory=list, compare=False)

    def run(
        self, fn: Callable[..., Any], args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
        on_progress: PartyProgress | None = None,
    ) -> list[Any]:
        return run_on_party_group(
            fn, args, kwargs, group_config=self.group_config, on_progress=on_progress,
            on_started=lambda group: self.placements.append(describe_placement(group)),
        )


def describe_placement(group: PartyGroup) -> dict[str, Any]:
    """Where a running group's actors are: the strategy, the transport, each actor's role, node IP and node id."""
    n = group.config.world_size
    return {
        "strategy": group.placement.strategy if group.placement else None,
        "transport": group.transport.get("transport"),
        "actors": [
            {"who": "dealer" if index == n else f"party {index}", "node_ip": info.get("node_ip"),
             "node_id": info.get("node_id")}
            for index, info in enumerate(group.actors_info)
        ],
    }


def run_on_party_group(
    fn: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    config: MPCConfig | None = None,
    group_config: PartyGroupConfig | None = None,
    on_progress: PartyProgress | None = None,
    on_started: Callable[[PartyGroup], None] | None = None,
) -> list[Any]:
    """Run ``fn(rank, *args, **kwargs)`` on every party of a fresh group; return the results by rank.

    The one-shot counterpart of :func:`mpcformer.mpc.launcher.run_local` on Ray actors. Joins the
    running Ray cluster, or starts a local one for the call when none is connected.
    ``on_progress(rank, event)`` receives the parties' progress events; ``on_started(group)`` is
    called once the group has joined its session, before ``fn`` runs.
    """
    from mpcformer.cluster_connect import connect

    group_config = group_config or PartyGroupConfig()
    if config is not None:
        group_config = group_config.model_copy(update={"mpc": config})
    call = PartyCall(fn, tuple(args), dict(kwargs or {}))
    with connect(num_cpus=max(2, group_config.world_size + 1)):
        with PartyGroup(group_config, name="oneshot") as group:
            if on_started is not None:
                on_started(group)
            return group.run([call] * group_config.world_size, on_progress=on_progress)
