"""A driver of a namespace cluster (run inside its head's namespace): one registered party operation of
tests/transport_party_fns.py on a party group, owner, client and dealer each on its role's node.

    python tests/multihost_driver.py OUT.pickle TRANSPORT OPERATION ARGS...   (integer ARGS become ints)
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import ray

TESTS = Path(__file__).resolve().parent


def main(out: str, transport: str, operation: str, *args: str) -> None:
    sys.path.insert(0, str(TESTS))
    import transport_party_fns as fns

    from mpcformer.cluster.config import PartyGroupConfig
    from mpcformer.cluster.party_group import PartyCall, PartyGroup, describe_placement

    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
           "MPCFORMER_PARTY_OPERATIONS": "transport_party_fns"}
    ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        config = PartyGroupConfig(role_resources=True, mpc={"transport": transport, "timeout_s": 120})
        with PartyGroup(config, name="multihost-test") as group:
            call = PartyCall(getattr(fns, operation), tuple(int(a) if a.isdigit() else a for a in args))
            results = group.run([call] * 2)
            placement = describe_placement(group)
    finally:
        ray.shutdown()
    Path(out).write_bytes(pickle.dumps({"results": results, "placement": placement}))


if __name__ == "__main__":
    main(*sys.argv[1:])
