"""Shared test fixtures.

- `data_dir`: the benchmark data directory ($THINKRL_DATA_DIR, else <repo>/../shared/data); tests that use
  it are skipped when neither exists. Mark them `@pytest.mark.data`.
- `run_cli`: run the real `thinkrl` command in a subprocess: `rc, stdout, stderr = run_cli(["data", "list"])`.
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
    full_env = {**os.environ, "COLUMNS": "200"}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH")) if p)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "stages.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def run_cli():
    """The `cli` helper: run_cli(args, cwd=None, env=None) -> (returncode, stdout, stderr)."""
    return cli
