"""Typed configuration objects: YAML in, validated pydantic models out, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from mpcformer.errors import UserError

__all__ = [
    "StrictModel", "ConfigError", "ComboName", "load_config", "build_config", "apply_overrides", "parse_set",
    "config_path", "shipped_config_names", "command_line_overrides", "job_config",
]

ModelT = TypeVar("ModelT", bound="StrictModel")


class ConfigError(UserError, ValueError):
    """A configuration the user must fix; the message says what and how."""


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _combo_name(text: str) -> str:
    from mpcformer.approx import Combo  # lazy: the registry imports torch, configs stay light

    return Combo.parse(text).name  # an unknown name raises with the known ones


#: An approximation combination, ``<activation>+<normaliser>`` or ``exact``, checked against the
#: registry and stored under its canonical name (``gelu+softmax`` becomes ``exact``). Every config
#: that names a combination uses this type.
ComboName = Annotated[str, AfterValidator(_combo_name)]


def _format_validation_error(
    cls: type, err: ValidationError, source: str, overrides: dict[str, Any], names: dict[str, str] | None
) -> str:
    """One line naming where the bad value came from. With ``names`` (dotted key -> flag; overrides
    from a command line), the flag, or else ``--set``, that set the field or a section above it;
    else ``source``."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    given = [key for key in overrides if where == key or where.startswith(key + ".")] if names is not None else []
    if given:
        key, value = given[0], overrides[given[0]]
        value = ",".join(map(str, value)) if isinstance(value, list) else value
        source = f"{names[key]} {value}" if key in names else f"--set {key}={value}"
    return f"{source}: invalid {cls.__name__} field '{where}': {first['msg']}"


def _shipped_configs_dir() -> Path:
    import mpcformer.jobs  # light: the job modules themselves are not imported

    return Path(mpcformer.jobs.__file__).parent / "configs"


def shipped_config_names() -> list[str]:
    """Names of the configs shipped in ``mpcformer/jobs/configs`` (``infer-tiny``, ``sweep-quick``, ...)."""
    return sorted(p.stem for p in _shipped_configs_dir().glob("*.yaml"))


def config_path(path: str | Path) -> Path:
    """``path`` when it is a file; else, for a bare name (``sweep-quick`` or ``sweep-quick.yaml``),
    the config shipped under that name; else ``path`` unchanged (loading it then says it is missing)."""
    path = Path(path)
    if path.is_file() or path.parent != Path("."):
        return path
    shipped = _shipped_configs_dir() / f"{path.name.removesuffix('.yaml')}.yaml"
    return shipped if shipped.is_file() else path


def load_config(
    cls: type[ModelT], path: str | Path, overrides: dict[str, Any] | None = None,
    override_names: dict[str, str] | None = None,
) -> ModelT:
    """Load ``cls`` from a YAML file or a shipped config's name (:func:`config_path`), then apply
    dotted ``overrides`` (``{"mpc.precision_bits": 20}``; ``override_names``: given when they come
    from a command line, the flag that gave each key, the others came from ``--set``)."""
    path = config_path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path} (pass an existing YAML file or a shipped config's name: "
            f"{', '.join(shipped_config_names())})"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (save the YAML as UTF-8)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return build_config(cls, data, overrides, source=str(path), override_names=override_names)


def build_config(
    cls: type[ModelT], data: dict[str, Any], overrides: dict[str, Any] | None = None, source: str = "config",
    override_names: dict[str, str] | None = None,
) -> ModelT:
    """Validate a plain mapping (plus dotted overrides) into ``cls``; raise :class:`ConfigError`."""
    data = apply_overrides(dict(data), overrides or {})
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(cls, err, source, overrides or {}, override_names)) from None


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested mapping; a path through a non-mapping is an error."""
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{dotted}': '{key}' is not a section")
            node = child
        node[leaf] = value
    return data


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set`` values: ``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` (values parsed as YAML scalars;
    text that is not valid YAML is kept as a string)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. mpc.timeout_s=60), got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            overrides[key.strip()] = value
    return overrides


def command_line_overrides(
    values: dict[str, Any], flag_keys: dict[str, str], set_items: list[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A job's dotted overrides and who gave each: ``values`` (flag dest -> value; ``None`` = not
    given, the config's value stands) through ``flag_keys`` (flag dest -> dotted key), then the
    ``--set`` items, which win. Returns ``(overrides, names)`` (dotted key -> the flag, for errors)."""
    given = {dest: value for dest, value in values.items() if dest in flag_keys and value is not None}
    overrides = {flag_keys[dest]: value for dest, value in given.items()}
    names = {flag_keys[dest]: "--" + dest.replace("_", "-") for dest in given}
    settings = parse_set(set_items)
    overrides.update(settings)
    return overrides, {key: flag for key, flag in names.items() if key not in settings}


def job_config(
    cls: type[ModelT], config: str | Path | None, overrides: dict[str, Any], names: dict[str, str]
) -> ModelT:
    """A job's config: ``--config`` (a YAML file or a shipped config's name; none: ``cls``'s defaults)
    with the command line's ``overrides``; a bad value is blamed on the flag or ``--set`` that gave it."""
    if config:
        return load_config(cls, config, overrides, names)
    return build_config(cls, {}, overrides, source="command line", override_names=names)
