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
TrainConfig, EvalConfig, WarmstartConfig, JudgeEvalConfig, PrepareConfig), declared with `setting(default, help)`
and, for a number, its bounds (`ge=`, `gt=`, `le=`, `lt=`: `setting(8, "...", ge=1)`). A field of another class that
is the same setting is declared `same_as(Class, "name")`: it takes that field's default and help, so each
setting has one default and one help text wherever it appears (the eval stage's `max_tokens` is the sample
stage's; `thinkrl run`'s `lr` is the trainer's). `root` follows these links to the declaration.

The stage commands' options are generated from these fields (stages/common.py `with_settings`), and so are
the flat TOML keys and options of `thinkrl run` (thinkrl/experiment.py); `project` builds a stage's settings
from an experiment's. `coerce` and `read_toml` check TOML and option values against the fields' types and
bounds; `check_settings(self)`, first in every settings class's `__post_init__`, checks the bounds of every field
(and that no float is NaN or infinite, and a field's own `check`), so an option is refused, naming its flag
(`--max-tokens must be >= 1, got 0`), before a stage reads an input or touches its output. Checks across fields
stay in the classes. TOML settings are flat `key = value` pairs; a `table` setting (a JSON object held as its
text, e.g. the judge's extra_body) may also be given as a TOML table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
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
            parse: Callable[[str], Any] | None = None, option: bool = True, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None,
            aliases: tuple[str, ...] = (), check: Callable[[Any], str | None] | None = None,
            table: bool = False) -> Any:
    """A settings field. flag: the option name when it is not --field-name (e.g. "--timeout"); short: a
    one-letter alias ("-n"); parse: the option is text and this turns it into the value ("k/n" -> (k, n));
    option=False: not an option of the stage command (set by the code that runs the stage). ge/gt/le/lt: the
    value's bounds (>=, >, <=, <; None is always allowed for an optional field; a tuple's every element).
    aliases: other names of the same setting (TRL's, e.g. "num_generations" for n), accepted as options
    (--num-generations) and TOML keys wherever the setting appears under its own name. check: value -> what is
    wrong with it (`must be a JSON object, got a list`) or None, refused as a bound is. table: a text setting
    holding a JSON object, which a TOML file may also give as a table (read as its JSON text)."""
    bounds = tuple((op, v) for op, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None)
    meta = {"help": help, "flag": flag, "short": short, "parse": parse, "option": option, "bounds": bounds,
            "aliases": tuple(aliases), "check": check, "table": table}
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


def aliases_of(cls: type, name: str) -> tuple[str, ...]:
    """The other names of `cls.name`: its declaration's aliases, where it keeps the declaration's name (thinkrl
    run's `n` is `num_generations` too; its `eval_k` is not eval's `k` under another name)."""
    src_cls, src_name = root(cls, name)
    return _field(src_cls, src_name).metadata.get("aliases", ()) if src_name == name else ()


def alias_flags(cls: type, name: str) -> list[str]:
    """--num-generations for the alias num_generations of cls.name."""
    return [f"--{a.replace('_', '-')}" for a in aliases_of(cls, name)]


def canonical_keys(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` with every alias key replaced by its setting's name; a one-line error when a setting is given
    twice (by its name and an alias, or by two aliases)."""
    names = {a: f.name for f in fields(cls) for a in aliases_of(cls, f.name)}
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for k, v in data.items():
        name = names.get(k, k)
        if name in out:
            raise ThinkrlError(f"{where}: `{name}` is given twice (as `{given[name]}` and as `{k}`); give one")
        out[name], given[name] = v, k
    return out


def aliases_markdown(commands: dict[str, type]) -> str:
    """The table of alias -> setting of the README: one row per alias, with the commands (and their settings
    classes) that accept it."""
    rows: dict[tuple[str, str], list[str]] = {}
    for command, cls in commands.items():
        for f in fields(cls):
            for a in aliases_of(cls, f.name):
                rows.setdefault((a, f.name), []).append(f"`{command}`")
    lines = ["| TRL name (option and TOML key) | thinkrl name | accepted by |", "|---|---|---|"]
    lines += [f"| `{a}` (`--{a.replace('_', '-')}`) | `{n}` (`--{n.replace('_', '-')}`) | {', '.join(cmds)} |"
              for (a, n), cmds in sorted(rows.items())]
    return "\n".join(lines) + "\n"


def flag_of(cls: type, name: str) -> str:
    """The option that sets `cls.name`: its declared flag, else --field-name."""
    return _field(cls, name).metadata.get("flag") or f"--{name.replace('_', '-')}"


# --------------------------------------------------------------------------------------------- bounds
_OPS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def bounds_text(bounds: tuple[tuple[str, float], ...]) -> str:
    """(("gt", 0), ("le", 1)) -> 'in (0, 1]'; (("ge", 1),) -> '>= 1'."""
    ops = dict(bounds)
    low = next(((k, ops[k]) for k in ("ge", "gt") if k in ops), None)
    high = next(((k, ops[k]) for k in ("le", "lt") if k in ops), None)
    if low and high:
        return f"in {'[' if low[0] == 'ge' else '('}{low[1]:g}, {high[1]:g}{']' if high[0] == 'le' else ')'}"
    return " and ".join(f"{_OPS[k][0]} {v:g}" for k, v in bounds)


def bounds_of(cls: type, name: str) -> tuple[tuple[str, float], ...]:
    return _field(cls, name).metadata.get("bounds", ())


def bound_problem(cls: type, name: str, value: Any) -> str | None:
    """What is wrong with `value` as the setting `cls.name` ('must be >= 1, got 0'), or None when nothing is:
    outside its declared bounds, a float that is NaN or infinite, or refused by its declared `check`."""
    check = _field(cls, name).metadata.get("check")
    if check is not None and value is not None and (problem := check(value)):
        return problem
    bounds = bounds_of(cls, name)
    for v in value if isinstance(value, tuple) else (value,):
        if v is None or isinstance(v, (bool, str)) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number, got {v}"
        if not all(_OPS[op][1](v, limit) for op, limit in bounds):
            got = f"{v:g}" if isinstance(v, float) else str(v)
            return f"must be {bounds_text(bounds)}, got {got}"
    return None


def check_settings(obj: Any) -> None:
    """Every field of the settings object within its declared bounds, else a one-line ThinkrlError naming the
    option (`--max-tokens must be >= 1, got 0`). Call it first in each settings class's __post_init__."""
    cls = type(obj)
    for f in fields(obj):
        problem = bound_problem(cls, f.name, getattr(obj, f.name))
        if problem is not None:
            meta = f.metadata
            name = (meta.get("short") or flag_of(cls, f.name)) if meta.get("option", True) else f"`{f.name}`"
            raise ThinkrlError(f"{name} {problem}")


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
    """A TOML or option value checked against the type and bounds of `cls.key`; a one-line error naming the key
    (where="option": naming the option's flag)."""
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
        want = "a table or a JSON object's text" if _field(cls, key).metadata.get("table") else base.__name__
        raise ThinkrlError(f"{where}: `{key}` must be {want}, got {type(value).__name__} {value!r}")
    value = float(value) if base is float else value
    problem = bound_problem(cls, key, value)
    if problem is not None:
        raise ThinkrlError(f"{flag_of(cls, key)} {problem}" if where == "option" else f"{where}: `{key}` {problem}")
    return value


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
    """Flat `key = value` settings of `cls` from a TOML file, type-checked; tables are not allowed, except as
    the value of a `table` setting (read as its JSON text)."""
    data = canonical_keys(cls, load_toml(path), str(path))
    for k, v in data.items():
        if isinstance(v, dict):
            if k not in _fields_of(cls) or not _field(cls, k).metadata.get("table"):
                raise ThinkrlError(f"{path}: table [{k}] is not allowed: settings are flat `key = value` pairs")
            try:
                data[k] = json.dumps(v, ensure_ascii=False, sort_keys=True)
            except (TypeError, ValueError) as e:  # a TOML date or time has no JSON form
                raise ThinkrlError(f"{path}: `{k}` must hold JSON values (strings, numbers, booleans, arrays, "
                                   f"tables): {e}") from None
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
