"""Fast reads of CrypTen's global config (``crypten.cfg``), same values.

**Why.** CrypTen reads its OmegaConf config on every operation (``cfg.communicator.verbose`` on
each exchange, ``cfg.encoder.precision_bits`` on each encoder, ``cfg.mpc.provider`` on each
product...), and one read costs ~35 us here: ``CrypTenConfig.__getattribute__`` first fails an
object lookup, then OmegaConf resolves two nodes. A ``bert-base`` forward does ~60,000 reads per
party, ~2 s of Python on the critical path (measured with cProfile).

**How.** :func:`cached_getattribute` wraps ``CrypTenConfig.__getattribute__`` (a patch of
:mod:`mpcformer.mpc.runtime`, on in every session): a config group (``cfg.mpc``)
comes back as a :class:`CachedGroup` that remembers the values read through it. Writes go
through it to the OmegaConf node (and refresh the remembered value); whenever CrypTen replaces
its config object (``temp_override``, ``load_config``, a dotted ``cfg["a.b"] = v``) the cache of
that object is dropped, so a read always returns what CrypTen's own lookup would.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["cached_getattribute", "CachedGroup"]


class CachedGroup:
    """A CrypTen config group (OmegaConf node) whose leaf values are read once."""

    __slots__ = ("_node", "_values")

    def __init__(self, node: Any):
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_values", {})

    def __getattr__(self, name: str) -> Any:  # only for names that are not slots
        values = object.__getattribute__(self, "_values")
        try:
            return values[name]
        except KeyError:
            pass
        value = getattr(object.__getattribute__(self, "_node"), name)
        if _is_group(value):
            value = CachedGroup(value)
        values[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_node"), name, value)
        object.__getattribute__(self, "_values").pop(name, None)

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.__setattr__(name, value)

    def __repr__(self) -> str:
        return f"CachedGroup({object.__getattribute__(self, '_node')!r})"


def _is_group(value: Any) -> bool:
    from omegaconf import DictConfig

    return isinstance(value, DictConfig)


def cached_getattribute(original: Callable[[Any, str], Any], config: Any = None) -> Callable[[Any, str], Any]:
    """A ``CrypTenConfig.__getattribute__`` that serves config groups from a cache, in front of
    ``original`` (installed by :mod:`mpcformer.mpc.runtime`; each session starts a fresh cache)."""
    state: dict[str, Any] = {"config": None, "groups": {}}

    def lookup(self: Any, name: str) -> Any:
        own = object.__getattribute__(self, "__dict__")
        if name in own:  # the instance's own attributes (``config``) are never groups to wrap
            return own[name]
        config = own.get("config")
        groups = state["groups"]
        if config is not state["config"]:  # CrypTen swapped its config object: start over
            state["config"], groups = config, {}
            state["groups"] = groups
        group = groups.get(name)
        if group is not None:
            return group
        value = original(self, name)
        if _is_group(value):
            value = groups[name] = CachedGroup(value)
        return value

    return lookup
