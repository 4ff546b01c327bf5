"""A tap on CrypTen's communicator: every exchange is reported to registered listeners.

CrypTen counts rounds and bytes per party (with ``cfg.communicator.verbose``) but mixes party 0's
traffic with the dealer in one counter. The tap wraps each communication method once, measures
the delta of CrypTen's own counters around the call and tells listeners whether the exchange was
with the dealer. Listeners power cost accounting, network emulation and the leak test harness.
Every session's runtime wraps the communicator's methods with :func:`wrap` (patch ``tap`` of
:mod:`mpcformer.mpc.runtime`, after the exchange's ``all_reduce``); without listeners a wrapped
method just calls CrypTen's.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

__all__ = ["CommEvent", "CommListener", "add_listener", "remove_listener", "wrap", "tapped"]


@dataclass(frozen=True)
class CommEvent:
    """One communicator call as seen by one party."""

    op: str
    with_dealer: bool
    rounds: float
    bytes: float
    seconds: float
    args: tuple
    kwargs: dict
    result: Any = None  # what the call returned (a received object, a reduced tensor)


class CommListener(Protocol):
    def before(self, op: str, with_dealer: bool, args: tuple, kwargs: dict) -> None: ...

    def after(self, event: CommEvent) -> None: ...

    # Optional: ``delay(with_dealer, rounds, nbytes) -> seconds`` the exchange should also take.


_listeners: list[CommListener] = []
_lock = threading.Lock()


def add_listener(listener: CommListener) -> None:
    """Report every exchange of the sessions in this process to ``listener`` until it is removed."""
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: CommListener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _is_dealer_group(comm: Any, args: tuple, kwargs: dict) -> bool:
    dealer_groups = [g for g in (getattr(comm, "ttp_group", None), getattr(comm, "ttp_comm_group", None)) if g is not None]
    group = kwargs.get("group")
    candidates = [group] if group is not None else [a for a in args if not hasattr(a, "shape")]
    return any(c is g for c in candidates for g in dealer_groups)


def _no_delay(with_dealer: bool, rounds: float, nbytes: float) -> float:
    return 0.0


def _wrap(method: Callable) -> Callable:
    @functools.wraps(method)
    def tapped(self, *args, **kwargs):
        if not _listeners:
            return method(self, *args, **kwargs)
        with_dealer = _is_dealer_group(self, args, kwargs)
        for listener in list(_listeners):
            listener.before(method.__name__, with_dealer, args, kwargs)
        rounds0, bytes0 = self.comm_rounds, self.comm_bytes
        tic = time.perf_counter()
        result = method(self, *args, **kwargs)
        rounds, nbytes = self.comm_rounds - rounds0, self.comm_bytes - bytes0
        # An emulated link makes the exchange itself take longer, so the delay counts as comm time.
        delay = sum(getattr(lst, "delay", _no_delay)(with_dealer, rounds, nbytes) for lst in list(_listeners))
        if delay > 0:
            time.sleep(delay)
        event = CommEvent(
            op=method.__name__,
            with_dealer=with_dealer,
            rounds=rounds,
            bytes=nbytes,
            seconds=time.perf_counter() - tic,
            args=args,
            kwargs=kwargs,
            result=result,
        )
        for listener in list(_listeners):
            listener.after(event)
        return result

    tapped.__mpcformer_tap__ = True
    return tapped


def tapped(method: Callable) -> Callable:
    """``method`` (a communicator function, named like the CrypTen method it stands for) reported
    to the listeners like the communicator's own methods."""
    return _wrap(method)


def wrap(method: Callable, config: Any = None) -> Callable:
    """A communicator method reported to the listeners (the runtime's ``tap`` patch); a method
    already tapped is returned as it is."""
    return method if getattr(method, "__mpcformer_tap__", False) else _wrap(method)
