"""Party groups on a simulated 3-node Ray cluster: placement (also by role resources), an encrypted
computation through the actors, only registered party operations, a clear error when the cluster is
too small, and failing fast on dead or stalled actors."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from conftest import PARTY_FNS_RUNTIME_ENV, leftovers
import torch
from group_party_fns import not_an_operation, reject_input

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from mpcformer.cluster.config import PartyGroupConfig  # noqa: E402
from mpcformer.cluster.party_group import GroupFailure, PartyCall, PartyGroup, PlacementError, plan_placement  # noqa: E402
from probe_party_fns import encrypted_matmul, encrypted_steps  # noqa: E402
from mpcformer.operations import OperationRefused  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def three_nodes():
    """A head and two worker nodes with one logical CPU each (all on this machine)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, runtime_env=PARTY_FNS_RUNTIME_ENV)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_plan_placement_spreads_when_the_cluster_has_the_nodes():
    cpu_node, gpu_node = {"CPU": 4.0}, {"CPU": 8.0, "GPU": 1.0}
    assert plan_placement(PartyGroupConfig(), [cpu_node] * 3).strategy == "STRICT_SPREAD"
    assert plan_placement(PartyGroupConfig(), [cpu_node] * 2).strategy == "PACK"
    assert plan_placement(PartyGroupConfig(strategy="SPREAD"), [cpu_node]).strategy == "SPREAD"
    on_gpus = plan_placement(PartyGroupConfig(), [gpu_node] * 3)
    assert on_gpus.use_gpu and on_gpus.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 3
    one_gpu = plan_placement(PartyGroupConfig(), [gpu_node, cpu_node, cpu_node])  # 3 GPUs needed
    assert not one_gpu.use_gpu and one_gpu.bundles == [{"CPU": 1.0}] * 3
    tfp = plan_placement(PartyGroupConfig(mpc={"dealer": "tfp", "insecure_dealer": True}), [cpu_node] * 2)
    assert tfp.bundles == [{"CPU": 1.0}] * 2 and tfp.strategy == "STRICT_SPREAD"  # no dealer actor


def test_role_resources_send_each_role_to_its_own_nodes():
    roles = [{"CPU": 4.0, "mpc_owner": 1.0}, {"CPU": 4.0, "mpc_client": 1.0}, {"CPU": 4.0, "mpc_dealer": 1.0}]
    placed = plan_placement(PartyGroupConfig(role_resources=True), roles)
    assert placed.strategy == "STRICT_SPREAD"
    assert placed.bundles == [{"CPU": 1.0, "mpc_owner": 1.0}, {"CPU": 1.0, "mpc_client": 1.0},
                              {"CPU": 1.0, "mpc_dealer": 1.0}]
    assert plan_placement(PartyGroupConfig(), roles).bundles == [{"CPU": 1.0}] * 3  # off by default
    with pytest.raises(ValueError, match="world_size 2"):
        PartyGroupConfig(role_resources=True, world_size=3)


def test_strict_spread_puts_each_actor_on_its_own_node_and_matches_plaintext(three_nodes):
    torch.manual_seed(0)
    a, b = torch.randn(3, 5), torch.randn(5, 2)
    # a deadline far beyond the test's own timeout: only failing fast can end the rejecting call below
    with PartyGroup(PartyGroupConfig(strategy="STRICT_SPREAD", mpc={"timeout_s": 3600}), name="spread") as group:
        nodes = [info["node_id"] for info in group.actors_info]
        assert len(set(nodes)) == 3, f"parties and dealer share nodes: {nodes}"
        assert [info["rank"] for info in group.actors_info] == [0, 1, 2]
        calls = [PartyCall(encrypted_matmul, (a.tolist(), None)), PartyCall(encrypted_matmul, (None, b.tolist()))]
        owner, client = group.run(calls)
        assert owner["product"] is None  # revealed to the client only
        assert torch.allclose(torch.tensor(client["product"]), a @ b, atol=1e-3)
        assert client["rounds"] > 0 and client["bytes"] > 0
        # a party rejecting its input fails the group at once (the peer's wait is cut short)
        with pytest.raises(GroupFailure) as failure:
            group.run([PartyCall(reject_input)] * 2)
        assert failure.value.who == "party 1" and "bad input on the client" in str(failure.value)
        assert not failure.value.retryable and not group.is_running
    assert leftovers() == ([], [])


def test_a_party_runs_only_registered_operations(three_nodes):
    with PartyGroup(PartyGroupConfig(mpc={"timeout_s": 30}), name="registry") as group:
        with pytest.raises(OperationRefused, match="not a party operation"):  # the driver will not send it
            group.run([PartyCall(not_an_operation)] * 2)
        party = ray.get_actor(f"{group.name}/party-0")
        assert ray.get(party.run.remote("mpcformer.inference.party_ops:owner_idle")) is None  # registered
        for name in ("group_party_fns:not_an_operation", "os:system", "mpcformer.inference.job:run_infer", "no-colon"):
            with pytest.raises(ray.exceptions.RayTaskError) as refused:
                ray.get(party.run.remote(name, ("echo ran",)))
            assert isinstance(refused.value.cause, OperationRefused), name
        with pytest.raises(ray.exceptions.RayTaskError) as shipped:  # code instead of a name
            ray.get(party.run.remote(not_an_operation))
        assert isinstance(shipped.value.cause, OperationRefused)
    assert leftovers() == ([], [])


def test_unplaceable_group_fails_fast_with_what_was_needed(three_nodes):
    config = PartyGroupConfig(world_size=3, strategy="STRICT_SPREAD", placement_timeout_s=3)
    with pytest.raises(PlacementError) as error:
        PartyGroup(config, name="too-big").start()
    message = str(error.value)
    assert "4 distinct nodes" in message and "3 alive node(s)" in message and "strategy: PACK" in message
    assert leftovers() == ([], [])


# Killed parties and dealers mid-job: tests/test_infer_job.py. Here: a stalled (SIGSTOP) party.
@pytest.mark.parametrize("victim, sig, who", [(0, signal.SIGSTOP, "party 0")], ids=["party-stalled"])
def test_dead_or_stalled_actor_fails_the_group_fast_and_names_it(three_nodes, victim, sig, who):
    config = PartyGroupConfig(mpc={"timeout_s": 4})
    group = PartyGroup(config, name="faulty").start()
    pid = group.actors_info[victim]["pid"]
    timer = threading.Timer(1.5, os.kill, (pid, sig))
    timer.start()
    try:
        with pytest.raises(GroupFailure) as failure:
            group.run([PartyCall(encrypted_steps, (10_000, 0.01))] * 2)
    finally:
        timer.cancel()
        if sig == signal.SIGSTOP:
            with_suppressed_lookup(os.kill, pid, signal.SIGCONT)
        group.shutdown()
    assert failure.value.who == who, str(failure.value)
    expected_state = "unresponsive" if sig == signal.SIGSTOP else "dead"
    assert expected_state in failure.value.states[who]
    assert leftovers() == ([], [])


def with_suppressed_lookup(fn, *args) -> None:
    try:
        fn(*args)
    except ProcessLookupError:
        pass
