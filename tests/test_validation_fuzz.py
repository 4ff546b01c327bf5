"""Bad input gets a clean, one-line error: never a traceback, never a hang (property-based).

Hypothesis throws generated malformed input at
- every typed config (:class:`~mpcformer.config.StrictModel` subclass found under ``mpcformer``)
  through :func:`~mpcformer.config.build_config`: unknown keys, wrong types, values outside the
  declared bounds, negative sizes, unknown approximations; nested sections too;
- :func:`~mpcformer.config.load_config` with malformed YAML files (text, binary junk, non-mappings);
- :meth:`mpcformer.approx.Combo.parse` with unknown names and parameters;
- the command line, :func:`mpcformer.cli.main` in-process, for every subcommand: unknown flags,
  non-numeric numbers, invalid choices, non-positive sizes, unknown combos, bad ``--config`` files,
  malformed ``--set``. The jobs' heavy entry points (Ray, training, MPC) are replaced by a sentinel:
  reaching one with malformed input means the input was not validated up front;
- the up-front checks in :mod:`mpcformer.validation`.

Accepted outcomes: :class:`~mpcformer.config.ConfigError` / :class:`~mpcformer.errors.UserError`
with a one-line message, or for the CLI exit status 2 with one ``error:`` line on stderr. Inputs
that earlier versions accepted or crashed on are pinned as regression cases (``REGRESSIONS``,
``CLI_REGRESSIONS``); ``KNOWN_GAPS`` / ``KNOWN_CLI_GAPS`` list what is still open (nothing today)
and keep those inputs out of the fuzzing until fixed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import os
import pkgutil
import string
import time
import typing
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import mpcformer
from mpcformer.approx import Combo, list_approximations
from mpcformer.approx.registry import UnknownApproximation
from mpcformer.cli import build_parser, main
from mpcformer.config import ConfigError, StrictModel, build_config, load_config
from mpcformer.errors import UserError

pytestmark = pytest.mark.timeout(600)

#: hypothesis settings: reproducible (CI), no example database written into the repository
FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)

#: an input taking longer than this counts as a hang
HANG_S = 30.0

#: (config class, field) that accept clearly invalid values today -> (an invalid mapping, the fix)
KNOWN_GAPS: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
#: (config class, field) that once accepted an invalid value -> (that mapping, where it is now checked)
REGRESSIONS: dict[tuple[str, str], tuple[dict[str, Any], str]] = {
    ("DataConfig", "max_length"): ({"max_length": -5}, "data/loading.py DataConfig: max_length needs ge=1"),
    ("DataConfig", "max_train_examples"): ({"max_train_examples": -1}, "data/loading.py: max_train_examples needs ge=1"),
    ("DataConfig", "max_dev_examples"): ({"max_dev_examples": 0}, "data/loading.py: max_dev_examples needs ge=1"),
    ("DataConfig", "num_labels"): ({"num_labels": -2}, "data/loading.py DataConfig: num_labels needs ge=1"),
    ("OptimConfig", "max_grad_norm"): ({"max_grad_norm": -1.0}, "training/config.py OptimConfig: max_grad_norm needs gt=0"),
    ("DistillConfig", "combo"): ({"combo": "foo+bar"}, "training/config.py DistillConfig: check combo with Combo.parse"),
    ("MatmulShape", "a"): ({"name": "m", "a": [-4, 8], "b": [8, 2]}, "bench/matmul.py MatmulShape: dimensions need ge=1"),
    ("DemoConfig", "approx"): ({"approx": "foo+bar"}, "demo.py DemoConfig: check approx with Combo.parse"),
}
#: CLI flags (subcommand, dest) whose non-positive values still reach the job's heavy work
KNOWN_CLI_GAPS: dict[tuple[str, str], str] = {}
#: command lines that once crashed with a traceback -> where that is now handled
CLI_REGRESSIONS: dict[tuple[str, ...], str] = {
    ("infer", "--set", "a=[1"): "jobs/infer.py _overrides: catch yaml.YAMLError from yaml.safe_load (or use training.cli_args.parse_set)",
    ("sweep", "--set", "a=[1"): "jobs/sweep.py run: catch yaml.YAMLError from yaml.safe_load (or use training.cli_args.parse_set)",
    ("finetune", "--config", "<non-UTF-8 file>"): "config.py load_config: catch UnicodeDecodeError from read_text",
}
#: jobs that crash on --set values that are not YAML (none since mpcformer.config.parse_set)
_YAML_SET_CRASHERS: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- discovery
def _import_all() -> None:
    for info in pkgutil.walk_packages(mpcformer.__path__, "mpcformer."):
        with contextlib.suppress(ImportError):  # optional extras (a missing backend) are not configs
            importlib.import_module(info.name)


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@functools.cache
def models() -> list[type[StrictModel]]:
    """Every StrictModel subclass under ``mpcformer`` (imported on first use, not at collection)."""
    _import_all()
    found = {cls for cls in _subclasses(StrictModel) if cls.__module__.startswith("mpcformer.")}  # not tests' own
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


any_model = st.deferred(lambda: st.sampled_from(models()))


def test_configs_were_discovered():
    names = {cls.__name__ for cls in models()}
    assert {"MPCConfig", "FunctionSettings", "NetworkProfile", "PartyGroupConfig"} <= names
    assert len(models()) >= 8, names


#: valid values of required fields, so that a malformed mapping fails for its malformation only
_REQUIRED = {
    "MatmulShape": {"name": "m", "a": [4, 8], "b": [8, 2]},
    "NetworkProfile": {"bandwidth_bps": 1e9, "rtt_s": 0.001},
    "EncryptedBertConfig": {
        "vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 32, "type_vocab_size": 2, "num_labels": 2,
    },
}


def _base(cls: type) -> dict[str, Any]:
    return dict(_REQUIRED.get(cls.__name__, {}))


def test_required_fields_have_valid_bases():
    for cls in models():
        if any(info.is_required() for info in cls.model_fields.values()):
            assert cls.__name__ in _REQUIRED, f"add valid required fields of {cls.__name__} to _REQUIRED"
        build_config(cls, _base(cls))  # the base alone is valid


def _gap_of(cls: type) -> set[str]:
    """Fields of ``cls`` (or a base) listed in KNOWN_GAPS."""
    names = {c.__name__ for c in cls.__mro__}
    return {field for (owner, field) in KNOWN_GAPS if owner in names}


# ----------------------------------------------------------------------------- what a field accepts
def _kinds(annotation: Any) -> tuple[set[str], tuple]:
    """Coarse kinds a pydantic annotation accepts and its Literal values."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return {"any"}, ()
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        kinds, literals = set(), ()
        for arg in typing.get_args(annotation):
            k, lit = _kinds(arg)
            kinds |= k
            literals += lit
        return kinds, literals
    if origin is typing.Literal:
        return {"literal"}, typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set):
        return {"list"}, ()
    if origin is dict or annotation is dict:
        return {"dict"}, ()
    if annotation is type(None):
        return {"none"}, ()
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        return {"model"}, ()
    for kind in (bool, int, float, str):
        if annotation is kind:
            return {kind.__name__}, ()
    return {"any"}, ()


def _wrong_types(annotation: Any) -> list[Any]:
    """Values no lax pydantic coercion turns into ``annotation``."""
    kinds, literals = _kinds(annotation)
    if "any" in kinds:
        return []
    wrong: list[Any] = []
    if not kinds & {"list"}:
        wrong.append([1, 2])
    if not kinds & {"dict", "model"}:
        wrong.append({"x": 1})
    if not kinds & {"str"} and "not-a-number" not in literals:
        wrong.append("not-a-number")
    if not kinds & {"str", "float", "literal"}:
        wrong.append(1.5)
    if not kinds & {"int", "float", "bool", "literal"}:
        wrong.append(123)
    if "none" not in kinds:
        wrong.append(None)
    if kinds == {"bool"}:
        wrong.append("maybe")
    return wrong


def _out_of_range(info: Any, annotation: Any) -> st.SearchStrategy | None:
    """Values violating the field's declared bounds (ge, gt, le, lt, min_length, max_length)."""
    kinds, _ = _kinds(annotation)
    integral = "float" not in kinds
    options = []
    for meta in info.metadata:
        for name, sign in (("ge", -1), ("gt", -1), ("le", 1), ("lt", 1)):
            bound = getattr(meta, name, None)
            if bound is None or isinstance(bound, bool):
                continue
            strict = name in ("ge", "le")
            if integral:
                step = st.integers(1 if strict else 0, 10**9)
                options.append(step.map(lambda k, b=bound, s=sign: int(b) + s * k))
            else:
                step = st.floats(0, 1e12, allow_nan=False, exclude_min=strict)
                options.append(step.map(lambda k, b=bound, s=sign: float(b) + s * k).filter(lambda v, b=bound, n=name: _violates(v, b, n)))
        if isinstance(meta, annotated_types.MinLen) and meta.min_length > 0:
            options.append(st.just([]))
    return st.one_of(options) if options else None


def _violates(value: float, bound: float, name: str) -> bool:
    return {"ge": value < bound, "gt": value <= bound, "le": value > bound, "lt": value >= bound}[name]


def _nested_fields(cls: type[StrictModel]) -> list[tuple[str, type[StrictModel]]]:
    out = []
    for name, info in cls.model_fields.items():
        for arg in (info.annotation, *typing.get_args(info.annotation)):
            if isinstance(arg, type) and issubclass(arg, StrictModel):
                out.append((name, arg))
    return out


@st.composite
def malformed_config(draw: st.DrawFn, cls: type[StrictModel] | None = None, depth: int = 0) -> tuple[type, dict, str]:
    """``(config class, mapping, what is wrong)``: a mapping that must not validate."""
    cls = cls or draw(any_model)
    fields = cls.model_fields
    nested = _nested_fields(cls)
    kinds = ["unknown key", "wrong type", "out of range", "combo"]
    if nested and depth < 2:
        kinds.append("nested")
    kind = draw(st.sampled_from(kinds))
    base = _base(cls)
    if kind == "unknown key":
        key = draw(st.text(string.ascii_letters + "_.", min_size=1, max_size=12).filter(lambda k: k.split(".")[0] not in fields))
        return cls, {**base, key: draw(st.integers() | st.text(max_size=5))}, f"unknown key {key!r}"
    if kind == "nested":
        name, sub = draw(st.sampled_from(nested))
        _, inner, why = draw(malformed_config(sub, depth + 1))
        return cls, {**base, name: inner}, f"{name}: {why}"
    if kind == "combo":
        combo_fields = [n for n, i in fields.items() if n in ("approx", "combos", "combo") and n not in _gap_of(cls)]
        value = draw(bad_combo_text)
        assume(combo_fields)
        name = draw(st.sampled_from(combo_fields))
        listed = "list" in _kinds(fields[name].annotation)[0]
        return cls, {**base, name: [value] if listed else value}, f"unknown approximation {value!r}"
    candidates = [(n, i) for n, i in fields.items() if n not in _gap_of(cls)]
    name, info = draw(st.sampled_from(candidates)) if candidates else (None, None)
    assume(name is not None)
    if kind == "wrong type":
        wrong = _wrong_types(info.annotation)
        assume(wrong)
        value = draw(st.sampled_from(wrong))
        return cls, {**base, name: value}, f"{name}={value!r} (wrong type)"
    strategy = _out_of_range(info, info.annotation)
    assume(strategy is not None)
    value = draw(strategy)
    return cls, {**base, name: value}, f"{name}={value!r} (out of range)"


# ----------------------------------------------------------------------------- combos
_KNOWN = {a.name for a in list_approximations()}
_VALID_COMBOS = {"exact"} | {
    f"{a.name}+{n.name}" for a in list_approximations("activation") for n in list_approximations("normaliser")
}
bad_combo_text = st.one_of(
    st.text(max_size=20),
    st.tuples(st.sampled_from(sorted(_KNOWN) + ["", "gelu2", "QUAD"]), st.sampled_from(sorted(_KNOWN) + ["", "soft max"])).map("+".join),
    st.lists(st.sampled_from(sorted(_KNOWN)), min_size=3, max_size=4).map("+".join),
).filter(lambda text: text.strip() not in _VALID_COMBOS)


def _one_line(message: str) -> None:
    assert message.strip(), "empty error message"
    assert "\n" not in message.strip(), f"error message spans lines:\n{message}"
    assert "Traceback" not in message


@contextlib.contextmanager
def _deadline(what: str) -> Iterator[None]:
    tic = time.monotonic()
    yield
    elapsed = time.monotonic() - tic
    assert elapsed < HANG_S, f"{what} took {elapsed:.0f}s (a hang)"


# ----------------------------------------------------------------------------- configs
@fuzz(150)
@given(malformed_config())
def test_malformed_configs_raise_config_error(case):
    cls, data, why = case
    with _deadline(f"{cls.__name__} {data!r}"):
        try:
            build_config(cls, data)
        except ConfigError as err:
            _one_line(str(err))
            return
    pytest.fail(f"{cls.__name__} accepted {data!r} ({why})")


@pytest.mark.parametrize("owner, field", sorted(REGRESSIONS))
def test_config_regressions_are_rejected(owner, field):
    cls = next(c for c in models() if c.__name__ == owner)
    data, where = REGRESSIONS[(owner, field)]
    with pytest.raises(ConfigError):
        build_config(cls, data)


@fuzz(40)
@given(any_model, st.text(max_size=10), st.integers(-5, 5))
def test_overrides_through_non_sections_are_errors(cls, key, value):
    """``{key: 5, key.x: 5}``: the second override goes through a number, never a crash."""
    with _deadline(f"override {key!r}"), pytest.raises(ConfigError) as info:
        build_config(cls, {}, {key: value, f"{key}.x": value})
    _one_line(str(info.value))


# ----------------------------------------------------------------------------- YAML files
_YAML_JUNK = [
    "key: [unclosed",
    "\t- tab indented",
    "- a\n- b\n",
    "just a string",
    "42",
    "a: !!python/object/apply:os.system ['true']",
    "a: &x [*x]",
    "? [complex, key]\n: value",
    "{a: 1, a: 2}",
    "precision_bits: 16\nprecision_bits: 20",
    "a: 1\n  b: 2",
    "%YAML 9.9\n---\na: 1",
    "---\na: 1\n---\nb: 2",
    "l: &l [1, 2, 3]\nm: &m [*l, *l, *l]\nn: [*m, *m, *m, *m]",
]


def _is_utf8(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@fuzz(80)
@given(
    any_model,
    st.one_of(
        st.sampled_from(_YAML_JUNK).map(str.encode),
        st.text(max_size=60).map(str.encode),
        st.binary(max_size=60).filter(_is_utf8),  # non-UTF-8 bytes: see test_known_crash_non_utf8_yaml
        malformed_config().map(lambda case: yaml.safe_dump(case[1]).encode()),
    ),
)
def test_malformed_yaml_files_raise_config_error(tmp_path_factory, cls, content):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_bytes(content)
    with _deadline(f"load_config({cls.__name__}, {content!r})"):
        try:
            load_config(cls, path)
        except ConfigError as err:
            _one_line(str(err))


def test_non_utf8_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError):
        load_config(models()[0], path)


def test_missing_and_directory_config_paths(tmp_path):
    for path in (tmp_path / "absent.yaml", tmp_path):
        with pytest.raises(ConfigError, match="not found"):
            load_config(models()[0], path)


# ----------------------------------------------------------------------------- combos
@fuzz(60)
@given(bad_combo_text)
def test_unknown_approximations_are_user_errors(text):
    with pytest.raises(UnknownApproximation) as info:
        Combo.parse(text)
    assert isinstance(info.value, UserError)
    _one_line(str(info.value))


@fuzz(20)
@given(st.sampled_from(sorted(_VALID_COMBOS - {"exact"})), st.text(string.ascii_letters, min_size=1, max_size=8), st.floats(allow_nan=False))
def test_unknown_approximation_parameters_are_user_errors(text, key, value):
    combo = Combo.parse(text)
    assume(key not in {p for a in list_approximations() for p in a.params})
    for params in ({"activation_params": {key: value}}, {"normaliser_params": {key: value}}):
        with pytest.raises(UnknownApproximation, match="no parameter"):
            Combo.parse(combo.name, **params)


# ----------------------------------------------------------------------------- command line
class _ReachedHeavyWork(BaseException):
    """A job got past validation into Ray / training / MPC work (BaseException: not swallowed)."""


_HEAVY = [
    ("mpcformer.inference.job", "run_infer"),
    ("mpcformer.cluster_connect", "connect"),
    ("mpcformer.bench.runner", "run_bench"),
    ("mpcformer.bench.runner", "write_report"),
    ("mpcformer.training.finetune", "run_finetune"),
    ("mpcformer.training.distill", "run_distill"),
    ("mpcformer.sweep", "run_sweep"),
    ("mpcformer.demo", "run_demo"),
    ("mpcformer.observability.prometheus", "PrometheusServer"),
    ("mpcformer.observability.prometheus", "write_config"),
]


@contextlib.contextmanager
def _heavy_work_blocked() -> Iterator[None]:
    def sentinel(name: str) -> Callable[..., Any]:
        def reached(*args: Any, **kwargs: Any) -> Any:
            raise _ReachedHeavyWork(name)

        return reached

    with contextlib.ExitStack() as stack:
        for module_name, attr in _HEAVY:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            if hasattr(module, attr):
                stack.enter_context(mock.patch.object(module, attr, sentinel(f"{module_name}.{attr}")))
        yield


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBPARSERS = _subparsers()


def _options(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in sub._actions if a.option_strings and a.dest != "help"}


#: dest -> strategy of invalid (non-positive or out of range) values, as command-line text
_BAD_SIZES: dict[str, st.SearchStrategy[str]] = {
    **{d: st.integers(-10**6, 0).map(str) for d in (
        "batch_size", "repeats", "limit", "groups", "max_steps", "stage1_max_steps", "stage2_max_steps",
        "threads", "eval_every", "save_every", "num_cpus", "max_length", "max_train_examples", "max_dev_examples",
    )},
    "seq_len": st.integers(-10**6, 1).map(str),
    "private_sentences": st.integers(-10**6, 0).map(str),
    **{d: st.integers(-10**6, 15).map(str) for d in ("teacher_examples", "stage1_examples", "stage2_examples")},
    "port": st.one_of(st.integers(-10**6, -1), st.integers(65536, 10**7)).map(str),
    **{d: st.floats(-1e9, 0).map(repr) for d in (
        "epochs", "lr", "stage1_epochs", "stage1_lr", "stage2_epochs", "stage2_lr", "temperature", "timeout",
    )},
    "warmup_ratio": st.one_of(st.floats(-1e6, -1e-6), st.floats(1.0, 1e6)).map(repr),
    "validation_fraction": st.one_of(st.floats(-1e6, -1e-6), st.floats(1.0, 1e6)).map(repr),
    "weight_decay": st.floats(-1e6, -1e-9).map(repr),
}
_COMBO_FLAGS = ("approx", "combo")


def _not_a(kind: type) -> Callable[[str], bool]:
    def rejected(text: str) -> bool:
        try:
            kind(text)
        except (TypeError, ValueError):
            return True
        return False

    return rejected


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    files = {
        "junk": b"key: [unclosed", "list": b"- a\n- b\n", "binary": b"\xff\xfe\x00bad",
        "unknown key": b"zz_no_such_key: 1\n", "negative": b"batch_size: -3\nrepeats: -1\n",
        "valid sweep": b"name: fuzz\n",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name.replace(' ', '-')}.yaml"
        paths[name].write_bytes(content)
    paths["absent"] = folder / "absent.yaml"
    paths["directory"] = folder
    return paths


@st.composite
def malformed_argv(draw: st.DrawFn, files: dict[str, Path]) -> tuple[list[str], str]:
    """``(argv, what is wrong)`` for one subcommand, with exactly one malformed part."""
    command = draw(st.sampled_from(sorted(SUBPARSERS)))
    sub = SUBPARSERS[command]
    options = _options(sub)
    prefix = [command]
    if "config" in options and options["config"].required:  # e.g. sweep: give a valid file
        prefix += ["--config", str(files["valid sweep"])]
    kinds = ["unknown flag"]
    typed = [d for d, a in options.items() if a.type in (int, float) and a.nargs is None]
    choice = [d for d, a in options.items() if a.choices]
    sizes = [d for d in options if d in _BAD_SIZES and (command, d) not in KNOWN_CLI_GAPS]
    kinds += ["not a number"] * bool(typed) + ["bad choice"] * bool(choice) + ["bad size"] * bool(sizes)
    combos = [d for d in _COMBO_FLAGS if d in options and (command, d) not in KNOWN_CLI_GAPS]
    kinds += ["bad combo"] * bool(combos)
    kinds += ["bad config"] * ("config" in options) + ["bad set"] * ("set" in options) + ["bad network"] * ("network" in options)
    kind = draw(st.sampled_from(kinds))
    if kind == "unknown flag":
        name = "--zz-" + draw(st.text(string.ascii_lowercase + "-", min_size=1, max_size=10))
        return prefix + [name, "1"], f"unknown flag {name}"
    if kind == "not a number":
        dest = draw(st.sampled_from(typed))
        action = options[dest]
        value = draw(st.text(max_size=8).filter(_not_a(action.type)))
        return prefix + [f"{action.option_strings[-1]}={value}"], f"{dest}={value!r} is not a number"
    if kind == "bad choice":
        dest = draw(st.sampled_from(choice))
        action = options[dest]
        value = draw(st.text(max_size=10).filter(lambda v: v not in action.choices))
        return prefix + [f"{action.option_strings[-1]}={value}"], f"{dest}={value!r} is not a choice"
    if kind == "bad size":
        dest = draw(st.sampled_from(sizes))
        value = draw(_BAD_SIZES[dest])
        return prefix + [f"{options[dest].option_strings[-1]}={value}"], f"{dest}={value} is out of range"
    if kind == "bad combo":
        flag = options[combos[0]].option_strings[-1]
        value = draw(bad_combo_text.filter(lambda t: t.strip() and "," not in t))
        return prefix + [f"{flag}={value}"], f"unknown approximation {value!r}"
    if kind == "bad config":
        which = draw(st.sampled_from(["junk", "list", "unknown key", "absent", "directory"]))  # binary: a known crash
        argv = [a for a in prefix if a not in ("--config", str(files["valid sweep"]))]
        return argv + ["--config", str(files[which])], f"--config {which}"
    if kind == "bad set":
        items = ["novalue", "=3", "zz_unknown_key=1", "zz.deep.key=1", "data=5"]
        if command not in _YAML_SET_CRASHERS:
            items += ["a=[1", "x=: :"]
        item = draw(st.one_of(
            st.sampled_from(items), st.text(string.ascii_lowercase, min_size=1, max_size=6).map(lambda k: f"zz{k}=1")
        ))
        return prefix + ["--set", item], f"--set {item!r}"
    value = draw(st.text(min_size=1, max_size=12).filter(lambda v: v not in ("lan", "wan") and not v.startswith(("-", "custom:"))))
    return prefix + ["--network", value], f"--network {value!r}"


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, err.getvalue()


@pytest.mark.parametrize("argv", sorted(CLI_REGRESSIONS))
def test_cli_regressions_exit_2_with_one_line(argv, tmp_path):
    if "<non-UTF-8 file>" in argv:
        path = tmp_path / "latin1.yaml"
        path.write_bytes("output_dir: caf\xe9\n".encode("latin-1"))
        argv = tuple(str(path) if a == "<non-UTF-8 file>" else a for a in argv)
    if argv[0] == "sweep":
        (tmp_path / "sweep.yaml").write_text("name: s\n")
        argv = (*argv, "--config", str(tmp_path / "sweep.yaml"))
    with _heavy_work_blocked():
        code, err = _run_cli(list(argv))
    assert code == 2 and "error:" in err


@pytest.fixture(scope="module")
def in_tmp_dir(tmp_path_factory):
    """Run the CLI from an empty folder: nothing a job might write lands in the repository."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(here)


def test_malformed_command_lines_exit_2_with_one_line(cli_files, in_tmp_dir):
    seen: set[str] = set()

    @fuzz(150)
    @given(malformed_argv(cli_files))
    def check(case):
        argv, why = case
        seen.add(argv[0])
        with _deadline(f"mpcformer {' '.join(argv)}"), _heavy_work_blocked():
            try:
                code, err = _run_cli(argv)
            except _ReachedHeavyWork as reached:
                pytest.fail(f"mpcformer {' '.join(argv)} ({why}) was not rejected up front: reached {reached}")
        lines = [line for line in err.strip().split("\n") if "error:" in line]
        assert code == 2, f"mpcformer {argv} ({why}) exited {code}; stderr:\n{err}"
        assert "Traceback" not in err, err
        assert len(lines) == 1 and err.strip().endswith(lines[0]), f"not one error line:\n{err}"

    check()
    assert seen == set(SUBPARSERS)  # every subcommand got malformed input


# ----------------------------------------------------------------------------- up-front checks
@fuzz(60)
@given(st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)))
def test_check_positive_int(value):
    from mpcformer.validation import InputError, check_batch_size

    try:
        result = check_batch_size(value)
    except InputError as err:
        _one_line(str(err))
        return
    assert type(value) is int and result == value >= 1


@fuzz(60)
@given(
    st.one_of(
        st.lists(st.lists(st.integers(-5, 40), max_size=4), max_size=3),
        st.lists(st.integers(-5, 40), max_size=4),
        st.lists(st.lists(st.floats(allow_nan=True), min_size=1, max_size=3), min_size=1, max_size=2),
        st.text(max_size=4),
    ),
    st.integers(1, 32),
    st.integers(1, 5),
)
def test_check_model_inputs(ids, vocab, max_positions):
    from types import SimpleNamespace

    from mpcformer.validation import InputError, check_model_inputs

    config = SimpleNamespace(vocab_size=vocab, max_position_embeddings=max_positions, model_type="bert")
    try:
        result = check_model_inputs(config, ids)
    except InputError as err:
        _one_line(str(err))
        return
    assert result.dim() == 2 and result.shape[0] >= 1 and 1 <= result.shape[1] <= max_positions
    assert int(result.min()) >= 0 and int(result.max()) < vocab


@fuzz(60)
@given(
    st.lists(st.lists(st.integers(-3, 40), min_size=1, max_size=6), min_size=1, max_size=3),
    st.lists(st.lists(st.integers(-1, 3), min_size=1, max_size=6), min_size=1, max_size=3),
    st.integers(1, 32), st.integers(1, 6), st.integers(1, 40),
)
def test_the_clients_live_check_against_the_owners_public_bundle(ids, mask, vocab, max_positions, tokenizer_vocab):
    """What the client runs on every batch before anything is shared (inference/party_ops.py)."""
    import torch

    from mpcformer.inference.party_ops import check_client_tensors
    from mpcformer.validation import InputError

    width = min(len(row) for row in ids + mask)
    ids_t = torch.tensor([row[:width] for row in ids])
    mask_t = torch.tensor([row[:width] for row in mask[:1]] * len(ids))  # the ids' shape
    facts = {"model_type": "bert", "vocab_size": vocab, "max_position_embeddings": max_positions, "pad_token_id": 0}
    try:
        check_client_tensors(facts, tokenizer_vocab, {"input_ids": ids_t, "attention_mask": mask_t}, "batch 0")
    except InputError as err:
        _one_line(str(err))
        assert str(err).startswith("batch 0: ")
        return
    assert tokenizer_vocab <= vocab and 0 <= int(ids_t.min()) and int(ids_t.max()) < vocab
    assert width <= max_positions and set(mask_t.flatten().tolist()) <= {0, 1} and bool((mask_t.sum(-1) > 0).all())


@fuzz(40)
@given(st.lists(st.one_of(st.integers(-3, 5), st.floats(), st.text(max_size=2), st.booleans()), max_size=5), st.integers(-1, 4))
def test_check_labels(labels, num_labels):
    from mpcformer.validation import InputError, check_labels

    try:
        check_labels(labels, num_labels)
    except InputError as err:
        _one_line(str(err))
        return
    assert num_labels >= 1
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels)


@fuzz(30)
@given(st.one_of(st.text(max_size=40), st.sampled_from(["", "~nosuchuser/x", "a\x00b", "x" * 5000, "/", "/etc/hostname"])))
def test_check_model_path(path):
    from mpcformer.validation import InputError, check_model_path

    try:
        result = check_model_path(path, presets=("tiny", "minilm"))
    except InputError as err:
        _one_line(str(err))
        return
    assert result in ("tiny", "minilm") or (Path(result) / "config.json").is_file()


def test_up_front_checks_name_the_fix(tmp_path):
    from mpcformer.validation import InputError, check_model_path, check_sequence_length, check_vocab_match

    with pytest.raises(InputError, match="truncate to at most 510"):
        check_sequence_length(600, 514, offset=4)
    with pytest.raises(InputError, match="use the tokenizer saved with this model"):
        check_vocab_match(30522, 1000)
    with pytest.raises(InputError, match="no config.json"):
        check_model_path(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert check_model_path(tmp_path) == str(tmp_path)
