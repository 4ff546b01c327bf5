"""The approximation registry: each MPC-friendly function registered once, by name, with its
plaintext (torch) and encrypted (CrypTensor) forms side by side.

Signatures, shared by both forms:
- activation:  ``fn(x, **params) -> y`` (elementwise)
- normaliser:  ``fn(scores, mask, **params) -> probs`` over the last dim. ``scores`` is
  ``(B, H, Tq, Tk)``; ``mask`` is a *public* plaintext 0/1 float tensor broadcastable to it
  (``(B, 1, 1, Tk)``: 1 = real token, 0 = padding). Masked keys get probability 0. The encrypted
  form may return :class:`~mpcformer.approx.functions.RowScaled` (numerator, per-row factor), so
  the attention applies the factor after ``probs @ V``; :meth:`Combo.normaliser_fn` materialises it.
- layernorm:   ``fn(variance, **params) -> 1/sqrt(variance)`` (elementwise, ``variance > 0``): the
  normaliser of LayerNorm, ``gamma (x - mean) fn(var + eps) + beta``. Its names start with ``ln:``.

``params`` are the function's keyword parameters with their defaults; ``check`` (optional) raises
``ValueError`` for values outside the range the function supports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from mpcformer.errors import UserError

__all__ = [
    "Approximation", "Combo", "DEFAULT_LAYERNORM", "register", "get", "list_approximations", "UnknownApproximation",
    "InvalidApproximationParams",
]

Kind = Literal["activation", "normaliser", "layernorm"]
_KINDS = ("activation", "normaliser", "layernorm")
#: the LayerNorm normaliser of every combination that names none (today's exact inverse square root)
DEFAULT_LAYERNORM = "ln:exact"
_LAYERNORM_PREFIX = "ln:"


class UnknownApproximation(UserError, ValueError):
    """An approximation or combination name that is not registered."""


class InvalidApproximationParams(UnknownApproximation):
    """A parameter an approximation does not take, or a value outside its supported range."""


@dataclass(frozen=True)
class Approximation:
    """One registered function: ``plain`` (torch) and ``encrypted`` (CrypTensor) compute the same maths."""

    name: str
    kind: Kind
    formula: str
    plain: Callable[..., Any]
    encrypted: Callable[..., Any]
    params: dict[str, float] = field(default_factory=dict)
    reference: str = ""
    check: Callable[[dict[str, float]], None] | None = None

    def resolve_params(self, overrides: dict[str, float] | None = None) -> dict[str, float]:
        """Defaults merged with ``overrides``; unknown names or out-of-range values raise
        :class:`InvalidApproximationParams` naming the valid ones."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(self.params)
        if unknown:
            raise InvalidApproximationParams(
                f"{self.kind} '{self.name}' has no parameter(s) {sorted(unknown)}; it takes {sorted(self.params) or 'none'}"
            )
        merged = {**self.params, **{key: float(value) for key, value in overrides.items()}}
        if self.check is not None:
            try:
                self.check(merged)
            except ValueError as err:
                raise InvalidApproximationParams(str(err)) from err
        return merged


_REGISTRY: dict[str, Approximation] = {}


def register(approx: Approximation) -> Approximation:
    """Add ``approx`` to the registry; a name can be registered only once."""
    if approx.kind not in _KINDS:
        raise ValueError(f"approximation kind must be one of {_KINDS}, got '{approx.kind}'")
    if not approx.name or "+" in approx.name or approx.name == "exact":
        raise ValueError(f"approximation name '{approx.name}' must be non-empty, without '+', and not 'exact'")
    if (approx.kind == "layernorm") != approx.name.startswith(_LAYERNORM_PREFIX):
        raise ValueError(f"'{approx.name}': LayerNorm normalisers, and only they, are named '{_LAYERNORM_PREFIX}<variant>'")
    if approx.name in _REGISTRY:
        raise ValueError(f"approximation '{approx.name}' is already registered")
    _REGISTRY[approx.name] = approx
    return approx


def list_approximations(kind: Kind | None = None) -> list[Approximation]:
    """Registered approximations (of one ``kind`` if given), in registration order."""
    return [a for a in _REGISTRY.values() if kind is None or a.kind == kind]


def get(name: str, kind: Kind | None = None) -> Approximation:
    """The approximation called ``name``; unknown names raise with the list of known ones."""
    approx = _REGISTRY.get(name)
    if approx is None or (kind is not None and approx.kind != kind):
        raise UnknownApproximation(f"unknown {kind or 'approximation'} '{name}'; known: {_names(kind)}")
    return approx


def _names(kind: Kind | None) -> str:
    return ", ".join(a.name for a in list_approximations(kind))


@dataclass(frozen=True)
class Combo:
    """An activation, an attention normaliser and a LayerNorm normaliser, written
    ``<activation>+<normaliser>[+ln:<variant>]``.

    ``exact`` means ``gelu+softmax``; a combination that names no LayerNorm normaliser has
    ``ln:exact`` (and its name leaves it out), so ``quad+2quad+ln:exact`` is ``quad+2quad``.
    ``params`` overrides per-function parameters, e.g. ``{"c": 4.0}`` for ``2quad``; keys must
    exist in the function's declared params.
    """

    activation: str = "gelu"
    normaliser: str = "softmax"
    activation_params: dict[str, float] = field(default_factory=dict)
    normaliser_params: dict[str, float] = field(default_factory=dict)
    layernorm: str = DEFAULT_LAYERNORM
    layernorm_params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in _KINDS:
            name, params = self._parts(kind)  # type: ignore[arg-type]
            get(name, kind).resolve_params(params)  # type: ignore[arg-type]

    def _parts(self, kind: Kind) -> tuple[str, dict[str, float]]:
        if kind == "activation":
            return self.activation, self.activation_params
        if kind == "normaliser":
            return self.normaliser, self.normaliser_params
        return self.layernorm, self.layernorm_params

    def __hash__(self) -> int:  # dict fields: hash the sorted items
        return hash(tuple((name, tuple(sorted(params.items()))) for name, params in map(self._parts, _KINDS)))

    @classmethod
    def parse(cls, text: str, **params: dict[str, float]) -> "Combo":
        """``"quad+2quad"``, ``"quad+2quad+ln:fit"``, ``"exact"`` or ``"exact+ln:fit"``; ``params`` are
        ``activation_params=`` / ``normaliser_params=`` / ``layernorm_params=``."""
        text = text.strip()
        parts = text.split("+")
        layernorm = {}
        if len(parts) in (2, 3) and parts[-1].startswith(_LAYERNORM_PREFIX):
            layernorm = {"layernorm": parts.pop()}
        if parts == ["exact"]:
            return cls("gelu", "softmax", **layernorm, **params)
        if len(parts) != 2 or not all(parts):
            raise UnknownApproximation(
                f"approximation combination '{text}' must be '<activation>+<normaliser>' (e.g. quad+2quad) or "
                "'exact', optionally followed by '+ln:<variant>' (e.g. quad+2quad+ln:fit); "
                f"activations: {_names('activation')}; normalisers: {_names('normaliser')}"
            )
        try:
            return cls(parts[0], parts[1], **layernorm, **params)
        except UnknownApproximation as err:  # name the combination the unknown part came from
            raise type(err)(f"{text}: {err}") from None

    @property
    def name(self) -> str:
        core = "exact" if (self.activation, self.normaliser) == ("gelu", "softmax") else f"{self.activation}+{self.normaliser}"
        return core if self.layernorm == DEFAULT_LAYERNORM else f"{core}+{self.layernorm}"

    @property
    def is_exact(self) -> bool:
        return self.name == "exact"

    def _merged(self, kind: Kind) -> tuple[Approximation, dict[str, float]]:
        name, overrides = self._parts(kind)
        approx = get(name, kind)
        return approx, approx.resolve_params(overrides)

    def activation_fn(self, encrypted: bool = False) -> Callable[[Any], Any]:
        """``fn(x)``: the activation's plaintext (torch) or encrypted (CrypTensor) form with its params."""
        approx, params = self._merged("activation")
        fn = approx.encrypted if encrypted else approx.plain
        return lambda x: fn(x, **params)

    def normaliser_fn(self, encrypted: bool = False) -> Callable[[Any, Any], Any]:
        """``fn(scores (B,H,Tq,Tk), mask (B,1,1,Tk) public 0/1)``: the normaliser's chosen form."""
        if encrypted:
            rows = self.normaliser_rows_fn()
            return lambda scores, mask: rows(scores, mask).probs()
        approx, params = self._merged("normaliser")
        return lambda scores, mask: approx.plain(scores, mask, **params)

    def normaliser_rows_fn(self) -> Callable[[Any, Any], Any]:
        """``fn(scores, mask)`` -> :class:`~mpcformer.approx.functions.RowScaled`: the encrypted
        normaliser with its per-row factor not yet applied."""
        from mpcformer.approx.functions import as_rows

        approx, params = self._merged("normaliser")
        return lambda scores, mask: as_rows(approx.encrypted(scores, mask, **params))

    def layernorm_fn(self, encrypted: bool = False) -> Callable[..., Any]:
        """``fn(variance, **overrides)`` ~ ``1/sqrt(variance)``: the LayerNorm normaliser's chosen
        form; ``overrides`` (one LayerNorm's calibrated parameters) replace the combination's."""
        approx, params = self._merged("layernorm")
        fn = approx.encrypted if encrypted else approx.plain

        def inv_sqrt(variance: Any, **overrides: float) -> Any:
            return fn(variance, **(approx.resolve_params({**params, **overrides}) if overrides else params))

        return inv_sqrt

    def to_dict(self) -> dict[str, Any]:
        """Plain record; the LayerNorm normaliser only when it is not the default (records of
        combinations without one are unchanged, and older readers accept them)."""
        record: dict[str, Any] = {
            "activation": self.activation,
            "normaliser": self.normaliser,
            "activation_params": dict(self.activation_params),
            "normaliser_params": dict(self.normaliser_params),
        }
        if self.layernorm != DEFAULT_LAYERNORM or self.layernorm_params:
            record.update(layernorm=self.layernorm, layernorm_params=dict(self.layernorm_params))
        return record

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Combo":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`UnknownApproximation`."""
        unknown = set(data) - {
            "activation", "normaliser", "activation_params", "normaliser_params", "layernorm", "layernorm_params",
        }
        if unknown:
            raise UnknownApproximation(f"approximation record has unknown field(s) {sorted(unknown)}")
        return cls(**data)
