"""One combination type (``mpcformer.config.ComboName``) in every config that names an approximation
combination: checked against the registry, stored under its canonical name, one error line that lists
the known names."""

from __future__ import annotations

import pytest

from mpcformer.approx import list_approximations
from mpcformer.config import ConfigError, build_config


def _combo_fields():
    from mpcformer.bench.runner import BenchConfig
    from mpcformer.demo import DemoConfig
    from mpcformer.inference.job import InferConfig
    from mpcformer.training.config import DistillConfig

    # (config, field, a list of names?)
    return [(BenchConfig, "approx", True), (InferConfig, "combos", True), (DemoConfig, "approx", False),
            (DistillConfig, "combo", False)]


def _value(name: str, listed: bool):
    return [name] if listed else name


def _known(kind: str) -> list[str]:
    return [approx.name for approx in list_approximations(kind)]


@pytest.mark.parametrize("bad, kinds", [
    ("cubic+2quad", ["activation"]), ("quad+cubic", ["normaliser"]), ("quad2quad", ["activation", "normaliser"]),
])
def test_a_bad_name_in_any_config_is_one_line_listing_the_known_names(bad, kinds):
    for cls, field, listed in _combo_fields():
        with pytest.raises(ConfigError) as info:
            build_config(cls, {field: _value(bad, listed)})
        message = str(info.value)
        assert "\n" not in message and field in message and bad in message, message
        for kind in kinds:
            assert all(name in message for name in _known(kind)), (cls.__name__, message)


def test_every_config_stores_the_canonical_name():
    for cls, field, listed in _combo_fields():
        cfg = build_config(cls, {field: _value(" gelu+softmax", listed)})
        assert getattr(cfg, field) == _value("exact", listed), cls.__name__
        cfg = build_config(cls, {field: _value("quad+2relu", listed)})
        assert getattr(cfg, field) == _value("quad+2relu", listed), cls.__name__
