"""Progress of long work inside a party (the layers of an encrypted forward), sent to whoever
launched the party.

The local launcher installs a sink that forwards events to its ``on_progress`` callback (a
``mpcformer bench`` progress bar); a Ray party actor keeps them until the party group polls it;
without a sink (plain calls) :func:`report` does nothing. Events are small plain dicts, e.g. ``{"kind": "layer", "done": 3, "total": 12}``.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["ProgressSink", "set_sink", "report"]

ProgressSink = Callable[[dict[str, Any]], None]
_sink: ProgressSink | None = None


def set_sink(sink: ProgressSink | None) -> None:
    """Send this process's progress events to ``sink`` (``None``: drop them)."""
    global _sink
    _sink = sink


def report(**event: Any) -> None:
    """Report one progress event; free when nobody listens."""
    if _sink is not None:
        _sink(event)
