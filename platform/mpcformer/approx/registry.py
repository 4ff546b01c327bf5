"""The approximation registry: each MPC-friendly function registered once, by name, with its
plaintext (torch) and encrypted (CrypTensor) forms side by side.

Signatures, shared by both forms:
- activation:  ``fn(x, **params) -> y`` (elementwise)
- normaliser:  ``fn(scores, mask, **params) -> probs`` over the last dim. ``scores`` is
  ``(B, H, Tq, Tk)``; ``mask`` is a *public* plaintext 0/1 float tensor broadcastable to it
  (``(B, 1, 1, Tk)``: 1 = real token, 0 = padding). Masked keys get probability exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from mpcformer.errors import UserError

__all__ = ["Approximation", "Combo", "register", "get", "list_approximations", "UnknownApproximation"]

Kind = Literal["activation", "normaliser"]
_KINDS = ("activation", "normaliser")


class UnknownApproximation(UserError, ValueError):
    """An approximation or combination name that is not registered."""


@dataclass(frozen=True)
class Approximation:
    name: str
    kind: Kind
    formula: str
    plain: Callable[..., Any]
    encrypted: Callable[..., Any]
    params: dict[str, float] = field(default_factory=dict)
    reference: str = ""


_REGISTRY: dict[str, Approximation] = {}


def register(approx: Approximation) -> Approximation:
    """Add ``approx`` to the registry; a name can be registered only once."""
    if approx.kind not in _KINDS:
        raise ValueError(f"approximation kind must be one of {_KINDS}, got '{approx.kind}'")
    if approx.name in _REGISTRY:
        raise ValueError(f"approximation '{approx.name}' is already registered")
    _REGISTRY[approx.name] = approx
    return approx


def list_approximations(kind: Kind | None = None) -> list[Approximation]:
    return [a for a in _REGISTRY.values() if kind is None or a.kind == kind]


def get(name: str, kind: Kind | None = None) -> Approximation:
    approx = _REGISTRY.get(name)
    if approx is None or (kind is not None and approx.kind != kind):
        known = ", ".join(a.name for a in list_approximations(kind))
        what = kind or "approximation"
        raise UnknownApproximation(f"unknown {what} '{name}'; known: {known}")
    return approx


@dataclass(frozen=True)
class Combo:
    """An activation plus an attention normaliser, written ``<activation>+<normaliser>``.

    ``exact`` means ``gelu+softmax``. ``params`` overrides per-function parameters, e.g.
    ``{"c": 4.0}`` for ``2quad``; keys must exist in the function's declared params.
    """

    activation: str = "gelu"
    normaliser: str = "softmax"
    activation_params: dict[str, float] = field(default_factory=dict)
    normaliser_params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind, params in (
            (self.activation, "activation", self.activation_params),
            (self.normaliser, "normaliser", self.normaliser_params),
        ):
            approx = get(name, kind)  # type: ignore[arg-type]
            unknown = set(params) - set(approx.params)
            if unknown:
                raise UnknownApproximation(
                    f"{kind} '{name}' has no parameter(s) {sorted(unknown)}; it takes {sorted(approx.params) or 'none'}"
                )

    @classmethod
    def parse(cls, text: str, **params: dict[str, float]) -> "Combo":
        text = text.strip()
        if text == "exact":
            return cls("gelu", "softmax", **params)
        parts = text.split("+")
        if len(parts) != 2 or not all(parts):
            raise UnknownApproximation(
                f"approximation combination '{text}' must be '<activation>+<normaliser>' (e.g. quad+2quad) or 'exact'"
            )
        return cls(parts[0], parts[1], **params)

    @property
    def name(self) -> str:
        return "exact" if (self.activation, self.normaliser) == ("gelu", "softmax") else f"{self.activation}+{self.normaliser}"

    @property
    def is_exact(self) -> bool:
        return self.name == "exact"

    def _merged(self, kind: Kind) -> tuple[Approximation, dict[str, float]]:
        approx = get(self.activation if kind == "activation" else self.normaliser, kind)
        overrides = self.activation_params if kind == "activation" else self.normaliser_params
        return approx, {**approx.params, **overrides}

    def activation_fn(self, encrypted: bool = False) -> Callable[[Any], Any]:
        approx, params = self._merged("activation")
        fn = approx.encrypted if encrypted else approx.plain
        return lambda x: fn(x, **params)

    def normaliser_fn(self, encrypted: bool = False) -> Callable[[Any, Any], Any]:
        approx, params = self._merged("normaliser")
        fn = approx.encrypted if encrypted else approx.plain
        return lambda scores, mask: fn(scores, mask, **params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "normaliser": self.normaliser,
            "activation_params": dict(self.activation_params),
            "normaliser_params": dict(self.normaliser_params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Combo":
        return cls(**data)
