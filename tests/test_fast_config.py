"""Cached reads of CrypTen's config (mpcformer.mpc.fast_config) return what CrypTen's own would."""

from __future__ import annotations

import copy

import pytest

from mpcformer.mpc import fast_config
from mpcformer.mpc.compat import crypten
from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.runtime import Runtime


@pytest.fixture
def cfg():
    cfg = crypten.cfg
    saved = copy.deepcopy(cfg.config)  # writes below change the config object in place
    runtime = Runtime(MPCConfig(), parties=2).install()
    try:
        yield cfg
    finally:
        runtime.restore()
        cfg.set_config(saved)


def test_reads_writes_and_overrides_match_cryptens_own_lookup(cfg):
    assert isinstance(cfg.mpc, fast_config.CachedGroup)
    assert cfg.mpc is cfg.mpc  # one cached group per config object
    assert cfg.encoder.precision_bits == cfg.config.encoder.precision_bits
    cfg.encoder.precision_bits = 11  # a write goes through to CrypTen's config
    assert cfg.config.encoder.precision_bits == 11 and cfg.encoder.precision_bits == 11
    setattr(cfg.functions, "exp_iterations", 5)
    assert cfg["functions.exp_iterations"] == 5 and cfg.functions["exp_iterations"] == 5
    with cfg.temp_override({"encoder.precision_bits": 3}):  # CrypTen swaps its config object
        assert cfg.encoder.precision_bits == 3
    assert cfg.encoder.precision_bits == 11
    cfg["communicator.verbose"] = not cfg.communicator.verbose  # dotted write: a merged new config
    assert cfg.communicator.verbose == cfg.config.communicator.verbose
    cfg.load_config(None)  # back to CrypTen's defaults: the cache must not answer 11
    assert cfg.encoder.precision_bits == cfg.config.encoder.precision_bits != 11


def test_runtime_restore_gives_crypten_its_lookup_back():
    runtime = Runtime(MPCConfig(), parties=2).install()
    runtime.restore()
    assert not isinstance(crypten.cfg.mpc, fast_config.CachedGroup)
    assert crypten.cfg.mpc.provider == crypten.cfg.config.mpc.provider
