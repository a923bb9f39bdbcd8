"""Settings: how a stage's settings are declared, once, and read from TOML files and options.

    @dataclass(frozen=True)
    class SegmentConfig:
        scheme: str = setting("thought", "reward scheme: outcome, thought, thought-static, step")
        alpha: float = setting(1.0, "penalty scale of incorrect thoughts")

    @dataclass(frozen=True)
    class ExperimentConfig:
        alpha: float = same_as(SegmentConfig, "alpha")       # the same setting: its default and help
        ...
    project(experiment_cfg, SegmentConfig)                   # SegmentConfig(alpha=cfg.alpha, ...)

Every setting is a field of one frozen dataclass (one per stage: SampleConfig, JudgeConfig, SegmentConfig,
TrainConfig, EvalConfig, WarmstartConfig, JudgeEvalConfig, PrepareConfig), declared with `setting(default, help)`. A field of another class that
is the same setting is declared `same_as(Class, "name")`: it takes that field's default and help, so each
setting has one default and one help text wherever it appears (the eval stage's `max_tokens` is the sample
stage's; `thinkrl run`'s `lr` is the trainer's). `root` follows these links to the declaration.

The stage commands' options are generated from these fields (stages/common.py `with_settings`), and so are
the flat TOML keys and options of `thinkrl run` (thinkrl/experiment.py); `project` builds a stage's settings
from an experiment's. `coerce` and `read_toml` check TOML and option values against the fields' types.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Callable
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any

from thinkrl.errors import ThinkrlError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def setting(default: Any, help: str, *, flag: str | None = None, short: str | None = None,
            parse: Callable[[str], Any] | None = None, option: bool = True) -> Any:
    """A settings field. flag: the option name when it is not --field-name (e.g. "--timeout"); short: a
    one-letter alias ("-n"); parse: the option is text and this turns it into the value ("k/n" -> (k, n));
    option=False: not an option of the stage command (set by the code that runs the stage)."""
    meta = {"help": help, "flag": flag, "short": short, "parse": parse, "option": option}
    return field(default=default, metadata=meta)


def same_as(cls: type, name: str, *, flag: str | None = None, short: str | None = None) -> Any:
    """A field that is the setting `cls.name`: its default, help and option parser, not a second declaration.
    `flag`/`short` name its option here when they differ from the source's."""
    src = _field(cls, name)
    meta = {**src.metadata, "source": (cls, name), "flag": flag, "short": short or src.metadata.get("short")}
    if src.default is MISSING:
        raise TypeError(f"{cls.__name__}.{name} has no default")
    return field(default=src.default, metadata=meta)


@functools.cache
def _fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls)}


def _field(cls: type, name: str) -> dataclasses.Field:
    try:
        return _fields_of(cls)[name]
    except KeyError:
        raise TypeError(f"{cls.__name__} has no setting {name!r}") from None


def root(cls: type, name: str) -> tuple[type, str]:
    """The (class, field) where the setting `cls.name` is declared (following same_as links)."""
    while (src := _field(cls, name).metadata.get("source")) is not None:
        cls, name = src
    return cls, name


def help_of(cls: type, name: str) -> str:
    return _field(cls, name).metadata["help"]


def field_type(cls: type, name: str) -> Any:
    """The annotated type of `cls.name` (strings resolved)."""
    return _hints(cls)[name]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # each base's annotations in its own module


def base_type(t: Any) -> Any:
    """`int | None` -> int; other types unchanged."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(t) else t


def project(cfg: Any, cls: type, **fixed: Any) -> Any:
    """`cls`'s settings taken from `cfg`: each field of `cls` whose setting (its root) is a field of `cfg`
    gets that value, `fixed` sets the rest it names, the others keep their defaults."""
    have = {root(type(cfg), f.name): f.name for f in fields(cfg)}
    values = {}
    for f in fields(cls):
        mine = have.get(root(cls, f.name))
        if mine is not None:
            values[f.name] = getattr(cfg, mine)
    unknown = set(fixed) - set(_fields_of(cls))
    if unknown:
        raise TypeError(f"{cls.__name__} has no settings {sorted(unknown)}")
    return cls(**{**values, **fixed})


# --------------------------------------------------------------------------------------------- values
def coerce(cls: type, key: str, value: Any, where: str) -> Any:
    """A TOML or option value checked against the type of `cls.key`; a one-line error naming the key."""
    if key not in _fields_of(cls):
        raise ThinkrlError(f"{where}: unknown setting `{key}` (known: {', '.join(_fields_of(cls))})")
    want = field_type(cls, key)
    if value is None and type(None) in typing.get_args(want):
        return None
    base = base_type(want)
    checks = {bool: lambda v: isinstance(v, bool),
              int: lambda v: isinstance(v, int) and not isinstance(v, bool),
              float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              str: lambda v: isinstance(v, str)}
    if base not in checks:
        raise ThinkrlError(f"{where}: `{key}` cannot be set here")
    if not checks[base](value):
        raise ThinkrlError(f"{where}: `{key}` must be {base.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if base is float else value


def load_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a one-line ThinkrlError for a missing, non-UTF-8 or invalid file."""
    if not path.is_file():
        raise ThinkrlError(f"{path}: no such file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ThinkrlError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ThinkrlError(f"{path}: invalid TOML ({e})") from None


def read_toml(path: Path, cls: type) -> dict[str, Any]:
    """Flat `key = value` settings of `cls` from a TOML file, type-checked; tables are not allowed."""
    data = load_toml(path)
    for k, v in data.items():
        if isinstance(v, dict):
            raise ThinkrlError(f"{path}: table [{k}] is not allowed: settings are flat `key = value` pairs")
    return {k: coerce(cls, k, v, str(path)) for k, v in data.items()}


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)  # JSON string escapes are valid TOML basic strings


def type_name(t: Any) -> str:
    """`int | None` -> 'int or None', for generated docs."""
    args = typing.get_args(t)
    if args:
        return " or ".join(type_name(a) for a in args)
    return "None" if t is type(None) else getattr(t, "__name__", str(t))
