"""MPC-friendly approximations: one registry, plaintext and encrypted forms side by side.

    from mpcformer.approx import Combo
    combo = Combo.parse("quad+2quad")
    act = combo.activation_fn(encrypted=False)
"""

from mpcformer.approx.registry import (
    Approximation,
    Combo,
    DEFAULT_LAYERNORM,
    InvalidApproximationParams,
    UnknownApproximation,
    get,
    list_approximations,
    register,
)
from mpcformer.approx import functions as _functions  # noqa: F401  (registers the built-ins)

__all__ = [
    "Approximation", "Combo", "DEFAULT_LAYERNORM", "InvalidApproximationParams", "UnknownApproximation", "get", "list_approximations",
    "register",
]
