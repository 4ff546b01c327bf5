"""Party operations of tests/test_infer_job.py that wrap the client's real operations (registered;
the actors import this module by name).

- :func:`sealed`: the client's process refuses, through an audit hook (``sys.addaudithook``), to
  open or list anything under the owner's model folder, and logs every attempt; then it runs the
  wrapped operation. The hook sees Python's own file access (``open``, ``os.listdir``,
  ``os.scandir``), which is how transformers reads a model or tokenizer folder's JSON files.
- :func:`tampered`: the client's tokenised tensors are altered (one value set) before the wrapped
  operation checks them: input that real text cannot produce.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from mpcformer.operations import party_operation, resolve_operation

_sealed_from: list[str] = []


def _attempt_log(folder: str) -> str:
    return folder.rstrip(os.sep) + ".reads.log"  # beside the folder, not in it


def _under(path: Any, folder: str) -> bool:
    if isinstance(path, int) or path is None:
        return False
    real = os.path.realpath(os.fsdecode(path))
    return real == folder or real.startswith(folder + os.sep)


def _hook(event: str, args: tuple) -> None:
    if event not in ("open", "os.listdir", "os.scandir") or not _sealed_from or not args:
        return
    folder = _sealed_from[0]
    if _under(args[0], folder):
        with open(_attempt_log(folder), "a") as handle:
            handle.write(f"{event} {os.fsdecode(args[0])}\n")
        raise PermissionError(f"the client may not read the owner's folder: {args[0]}")


def _seal(folder: str) -> None:
    if not _sealed_from:
        _sealed_from.append(os.path.realpath(folder))
        sys.addaudithook(_hook)
        try:  # the seal holds: reading a file of the folder fails here
            open(os.path.join(folder, "config.json")).close()
        except PermissionError:
            os.unlink(_attempt_log(_sealed_from[0]))
        else:
            raise AssertionError("the audit hook did not stop a read of the owner's folder")


@party_operation
def sealed(rank: int, folder: str, operation: str, args: tuple, kwargs: dict) -> Any:
    """Run ``operation`` in a process that cannot read ``folder`` (attempts logged beside it)."""
    _seal(folder)
    return resolve_operation(operation)(rank, *args, **kwargs)


@party_operation
def tampered(rank: int, key: str, value: int, operation: str, args: tuple, kwargs: dict) -> Any:
    """Run ``operation`` with ``tensors[key][0, -1] = value`` in every batch the client tokenises."""
    import mpcformer.inference.party_ops as party_ops

    real = getattr(party_ops._tensors, "__wrapped__", party_ops._tensors)

    def altered(*a, **k):
        tensors, labels = real(*a, **k)
        tensors[key][0, -1] = value
        return tensors, labels

    altered.__wrapped__ = real
    party_ops._tensors = altered
    return resolve_operation(operation)(rank, *args, **kwargs)
