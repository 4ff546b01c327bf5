"""netns: Ray nodes on separate network stacks of this machine (namespaces on a private bridge; root only).

    mpcformer netns up --nodes 3 --rate-mbit 1000       # prints the cluster (id, address, nodes) as JSON
    mpcformer netns exec --id ID -- mpcformer bench --launcher ray --role-resources --model minilm
    mpcformer netns down --id ID                        # or --all: every cluster of ours
    mpcformer netns run --nodes 3 -- mpcformer infer --config infer-tiny --set group.role_resources=true

Node 0 (the head) hosts the dealer, node 1 the model owner, node 2 the client (Ray resources
mpc_dealer, mpc_owner, mpc_client); ``exec`` and ``run`` start the command in the head's namespace
as a driver of the cluster (RAY_ADDRESS and the token file set). ``run`` tears the cluster down when
the command ends, fails or is interrupted; ``up`` leaves it running until ``down``.
"""

from __future__ import annotations

import argparse
import json
import subprocess

from mpcformer.errors import UserError


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=3, help="Ray nodes, one namespace each (node 0 is the head)")
    parser.add_argument("--rate-mbit", type=float, default=None, help="tbf limit on both directions of every link")
    parser.add_argument("--subnet", default=None, help="a /24 inside 198.18.0.0/15 (default: chosen from the id)")
    parser.add_argument("--cpus-per-node", type=int, default=1, help="logical CPUs each Ray node offers")


def _command_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", type=int, default=0, help="the node whose namespace runs the command (0: the head)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _cluster_options(actions.add_parser("up", help="build a cluster and leave it running; prints it as JSON"))
    run = actions.add_parser("run", help="build a cluster, run a command in its head's namespace, tear it down")
    _cluster_options(run)
    _command_options(run)
    exec_ = actions.add_parser("exec", help="run a command in a running cluster's head namespace")
    exec_.add_argument("--id", required=True, help="cluster id (4 hex digits; `list` shows them)")
    _command_options(exec_)
    down = actions.add_parser("down", help="tear a cluster down (processes, namespaces, links, state)")
    which = down.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="cluster id (4 hex digits)")
    which.add_argument("--all", action="store_true", help="every namespace cluster of ours")
    actions.add_parser("list", help="the clusters present and what each still holds")


def _config(args: argparse.Namespace):
    from mpcformer.cluster.netns import NetnsConfig
    from mpcformer.config import build_config

    return build_config(
        NetnsConfig,
        {"nodes": args.nodes, "rate_mbit": args.rate_mbit, "subnet": args.subnet, "cpus_per_node": args.cpus_per_node},
        source="command line",
    )


def _command(args: argparse.Namespace) -> list[str]:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UserError(f"netns {args.action} needs a command after -- (e.g. -- mpcformer bench --launcher ray)")
    return command


def _exec(cluster, args: argparse.Namespace) -> int:
    return subprocess.call(cluster.command(_command(args), node=args.node), env=cluster.driver_env())


def run(args: argparse.Namespace) -> int:
    from mpcformer.cluster.netns import NetnsCluster, cluster_ids, leftovers, teardown

    if args.action == "list":
        print(json.dumps({cid: leftovers(cid) for cid in cluster_ids()}, indent=2))
        return 0
    if args.action == "down":
        left = [line for cid in ([args.id] if args.id else cluster_ids()) for line in teardown(cid)]
        if left:
            print("still there: " + "; ".join(left))
            return 1
        return 0
    if args.action == "exec":
        return _exec(NetnsCluster.attach(args.id), args)
    cluster = NetnsCluster(_config(args))
    if args.action == "run":
        from mpcformer.cluster_connect import stop_on_sigterm

        _command(args)  # refuse before building anything
        stop_on_sigterm()  # SIGTERM unwinds through the teardown below, as Ctrl-C does
        cluster.up()
        try:
            print(json.dumps(cluster.describe()), flush=True)
            return _exec(cluster, args)
        finally:
            cluster.down()
    cluster.up()
    print(json.dumps(cluster.describe(), indent=2))
    print(f"# stop it with: mpcformer netns down --id {cluster.id}")
    return 0


if __name__ == "__main__":
    from mpcformer.cli import job_main

    raise SystemExit(job_main("mpcformer.jobs.netns"))
