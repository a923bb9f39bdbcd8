"""Shared pieces of the stage commands: error handling, options generated from settings, console.

`guard` turns a `ThinkrlError` into `error: <one line>` on stderr and exit code 2 (no traceback);
Ctrl-C exits 130. Every command is wrapped with it by `stages.cli`.

`with_settings(cfg=SampleConfig)` gives a command one option per field of a settings dataclass (thinkrl.settings:
help, default, flag from the field) and calls it with the built `cfg`; the command declares only its inputs
and outputs. `setting_options(cls)` makes the same options for other uses (`thinkrl run`: default None).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from thinkrl.errors import ThinkrlError
from thinkrl.problems import DATA_DIR_HELP

console = Console(stderr=True)  # progress and tables for people go to stderr; stdout stays for data (--json)
out = Console()

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help=DATA_DIR_HELP, show_default=False),
]
Force = Annotated[bool, typer.Option("--force", help="rerun even if an artifact with the same inputs and config exists")]


def guard(fn):
    """Wrap a command: ThinkrlError -> one line on stderr, exit 2; KeyboardInterrupt -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ThinkrlError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def setting_options(cls: type, *, unset_default: bool = False, panel: str | None = None) -> list[inspect.Parameter]:
    """One keyword-only typer option per option field of the settings dataclass `cls`. unset_default: every
    default is None (= not given, for `thinkrl run`, where the file or the field default decides)."""
    from thinkrl.settings import alias_flags, base_type, bounds_of, bounds_text, field_type, flag_of

    params = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("option", True):
            continue
        hint = field_type(cls, f.name)
        base, optional = base_type(hint), type(None) in typing.get_args(hint)
        flag = flag_of(cls, f.name)
        default: Any = None if unset_default else f.default
        if meta.get("parse") or typing.get_origin(base) is tuple and typing.get_args(base)[-1:] == (Ellipsis,):
            # text parsed by the field (k/n), or a repeatable option (tuple[str, ...]): None = the field default
            annotation: Any = (list[str] if meta.get("parse") is None else str) | None
            default = None
        else:
            annotation = (base | None) if (optional or unset_default) else base
        flags = [flag, *alias_flags(cls, f.name)]
        decls = [f"{x}/--no-{x[2:]}" for x in flags] if base is bool else flags
        if meta.get("short"):
            decls.append(meta["short"])
        # typer shows the default of a plain option; here, of a parsed one, and of every one when the default
        # is None only to mean "not given" (thinkrl run: the file, else this default, decides)
        told = unset_default or meta.get("parse") is not None
        shown = f" (default {_text(f.default)})" if told and f.default not in (None, "") else ""
        if bounds_of(cls, f.name):
            shown += f"; {bounds_text(bounds_of(cls, f.name))}"  # (no square brackets: rich markup)
        opt = typer.Option(*decls, help=meta["help"] + shown, show_default=not unset_default,
                           rich_help_panel=panel)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[annotation, opt]))
    return params


def _text(v: Any) -> str:
    return "/".join(map(str, v)) if isinstance(v, tuple) else str(v)


def settings_from(cls: type, values: dict[str, Any]) -> Any:
    """The settings object from the options' values (parsed, repeated and unset ones resolved)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if f.metadata.get("parse") and v is not None:
            v = f.metadata["parse"](v)
        elif isinstance(v, list):
            v = tuple(v)
        if v is None and (f.metadata.get("parse") or isinstance(f.default, tuple)):
            continue  # not given: the field default
        kwargs[f.name] = v
    return cls(**kwargs)


def with_settings(**settings: type):
    """Decorator: each keyword `param=SettingsClass` replaces the command's parameter `param` by one option per
    field of the class; the command is called with the settings object built from them."""

    def deco(fn):
        sig = inspect.signature(fn, eval_str=True)
        generated = {name: setting_options(cls) for name, cls in settings.items()}
        names = [p.name for ps in generated.values() for p in ps]
        clash = {n for n in names if names.count(n) > 1} | (set(names) & set(sig.parameters))
        if clash:
            raise TypeError(f"{fn.__name__}: option names used twice: {sorted(clash)}")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for name, cls in settings.items():
                mine = {p.name: kwargs.pop(p.name) for p in generated[name] if p.name in kwargs}
                kwargs[name] = settings_from(cls, mine)
            return fn(*args, **kwargs)

        kept = [p.replace(kind=p.KEYWORD_ONLY) for p in sig.parameters.values() if p.name not in settings]
        first = [p for p in kept if p.default is p.empty]  # inputs and outputs, then the settings, then the rest
        rest = [p for p in kept if p.default is not p.empty]
        wrapper.__signature__ = sig.replace(parameters=[*first, *(p for ps in generated.values() for p in ps), *rest])
        return wrapper

    return deco


def skipped(out_dir: Path) -> None:
    console.print(f"[dim]{out_dir}: up to date (same inputs and config); --force reruns[/dim]")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def show_progress() -> bool:
    """Progress bars are drawn unless THINKRL_NO_PROGRESS is set (1/true/yes)."""
    return not env_flag("THINKRL_NO_PROGRESS")


@contextlib.contextmanager
def token_bar(description: str):
    """A TokenProgress that a stage function starts (`start=bar.start`, once it knows its total and has work)
    and that is stopped however the stage ends."""
    bar = TokenProgress(0, description)
    try:
        yield bar
    finally:
        bar.stop()


class TokenProgress:
    """A rich progress bar over sequences with live tokens/s; `update(new_tokens, finished_sequences)`
    matches the engine's progress callback."""

    def __init__(self, total: int, description: str):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total, self.tokens = total, 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console, transient=False,
            disable=not show_progress(),
        )
        self._task = self._progress.add_task(description, total=total, rate="")
        self._t0 = None

    def __enter__(self) -> TokenProgress:
        import time

        self._time = time.perf_counter
        self._t0 = self._time()
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self, total: int) -> None:
        """Begin drawing, with `total` sequences (for a stage function's start callback); stop() ends it."""
        self._progress.update(self._task, total=total)
        self.__enter__()

    def stop(self) -> None:
        if self._t0 is not None:
            self.__exit__(None, None, None)
            self._t0 = None

    def update(self, new_tokens: int, finished: int) -> None:
        self.tokens += new_tokens
        elapsed = max(self._time() - self._t0, 1e-9)
        done = self._progress.tasks[0].completed + finished
        rate = f"{done / elapsed:.1f} seq/s  {self.tokens / elapsed:.0f} tok/s"
        self._progress.update(self._task, advance=finished, rate=rate)
