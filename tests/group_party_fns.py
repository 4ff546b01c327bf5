"""Party operations of tests/test_party_group.py (registered; the actors import this module by name)."""

from __future__ import annotations

import time

from mpcformer.errors import UserError
from mpcformer.operations import party_operation


@party_operation
def reject_input(rank: int) -> None:
    if rank == 1:
        raise UserError("bad input on the client")
    time.sleep(30)  # party 0 would wait for its peer: the group must not wait for it


def not_an_operation(rank: int) -> int:
    """A plain function: a party must refuse to run it."""
    return rank
