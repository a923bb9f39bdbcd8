"""Shared test fixtures.

- `data_dir`: the benchmark data directory ($THINKRL_DATA_DIR, else <repo>/../shared/data); tests that use
  it are skipped when neither exists. Mark them `@pytest.mark.data`.
- `run_cli`: run the real `thinkrl` command in a subprocess: `rc, stdout, stderr = run_cli(["data", "list"])`
  (the plain functions `cli`, `cli_command` and `cli_env` serve kill tests that need Popen).
- `one_thread`: torch on one thread for the module (tiny models; shared cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    env = os.environ.get("THINKRL_DATA_DIR")
    candidates = ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]
    for d in candidates:
        if d.is_dir():
            return d
    pytest.skip("benchmark data not found: set THINKRL_DATA_DIR to the folder holding math500/, aime24/, ... "
                f"(looked in {', '.join(map(str, candidates))})")


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def cli(args: Sequence[str | os.PathLike], cwd: str | os.PathLike | None = None,
        env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run `python -m stages.cli *args`; the repo is put on PYTHONPATH so any cwd works, and COLUMNS defaults
    to 200 so rich output does not wrap. `env` entries are added to (and override) the current environment."""
    proc = subprocess.run(cli_command(args), cwd=cwd, env=cli_env(env), capture_output=True, text=True,
                          timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def cli_command(args: Sequence[str | os.PathLike]) -> list[str]:
    """The argv of the real `thinkrl` command (for subprocess.Popen in kill tests)."""
    return [sys.executable, "-m", "stages.cli", *map(str, args)]


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: the repo on PYTHONPATH, COLUMNS 200, plus `env`."""
    full_env = {**os.environ, "COLUMNS": "200"}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH")) if p)
    full_env.update(env or {})
    return full_env


@pytest.fixture(scope="session")
def run_cli():
    """The `cli` helper: run_cli(args, cwd=None, env=None) -> (returncode, stdout, stderr)."""
    return cli


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny models gain nothing from two, and spin-waiting threads crawl when the two
    cores are shared with other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
