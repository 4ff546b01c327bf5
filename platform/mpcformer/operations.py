"""Party operations: the only functions a party actor runs.

A party actor takes the *name* of an operation from the driver, never its code, and runs the
function registered under that name in its own process:

    @party_operation                       # in an installed module, at module level
    def owner_batch(rank, request): ...

    PartyCall(owner_batch, (request,))     # the driver sends "mpcformer.inference.party_ops:owner_batch"

A name is ``<module>:<function>``. The actor finds an operation that is not registered yet by
importing its module, for modules of the ``mpcformer`` package and for the modules listed in the
party's environment variable ``MPCFORMER_PARTY_OPERATIONS`` (comma-separated, e.g. test modules);
any other name, and any function of those modules not decorated with :func:`party_operation`, is
refused with :class:`OperationRefused`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

__all__ = [
    "OperationRefused", "party_operation", "operation_name", "resolve_operation", "registered_operations",
    "EXTRA_MODULES_ENV",
]

#: Environment variable of a party process: more modules whose operations it may import.
EXTRA_MODULES_ENV = "MPCFORMER_PARTY_OPERATIONS"
_PACKAGE = "mpcformer"

_REGISTRY: dict[str, Callable[..., Any]] = {}


class OperationRefused(RuntimeError):
    """A party was asked to run a function that is not a registered party operation."""


def _name_of(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def party_operation(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``fn(rank, *args, **kwargs)`` as a party operation; returns ``fn`` unchanged."""
    name = _name_of(fn)
    if "<locals>" in fn.__qualname__ or "<lambda>" in fn.__qualname__:
        raise ValueError(f"a party operation must be a module-level function, got {name}")
    if _REGISTRY.get(name, fn) is not fn:
        raise ValueError(f"party operation {name} is already registered")
    _REGISTRY[name] = fn
    return fn


def operation_name(fn: Callable[..., Any]) -> str:
    """The name a party runs ``fn`` by; :class:`OperationRefused` when ``fn`` is not registered."""
    name = _name_of(fn)
    if _REGISTRY.get(name) is not fn:
        raise OperationRefused(f"{name} is not a party operation: decorate it with @party_operation")
    return name


def _importable(module: str) -> bool:
    extra = {m.strip() for m in os.environ.get(EXTRA_MODULES_ENV, "").split(",") if m.strip()}
    return module == _PACKAGE or module.startswith(f"{_PACKAGE}.") or module in extra


def resolve_operation(name: str) -> Callable[..., Any]:
    """The function registered as ``name`` in this process (importing its module when allowed)."""
    if not isinstance(name, str) or name.count(":") != 1:
        raise OperationRefused(f"a party runs operations by name ('<module>:<function>'), got {name!r}")
    module = name.split(":")[0]
    if name not in _REGISTRY and _importable(module):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise OperationRefused(f"party operation {name}: cannot import {module} here ({err})") from None
    if name not in _REGISTRY:
        raise OperationRefused(
            f"{name} is not a registered party operation: a party runs only functions decorated with "
            f"@party_operation in the mpcformer package or in a module named in {EXTRA_MODULES_ENV}"
        )
    return _REGISTRY[name]


def registered_operations() -> list[str]:
    """Names registered in this process so far, sorted."""
    return sorted(_REGISTRY)
