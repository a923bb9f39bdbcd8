"""The CLI starts without the model libraries: `--help` of every command, `thinkrl data list|prepare` and
`thinkrl inspect` import none of torch, transformers, vllm, matplotlib, math_verify, sympy, peft (each checked in a
fresh interpreter, whose `sys.modules` is the evidence). The start-up time itself is `just bench startup`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_env

HEAVY = ("torch", "transformers", "vllm", "matplotlib", "math_verify", "sympy", "peft")

# Walks the click command tree of the typer app, runs `--help` of every group and command through typer's
# CliRunner, then the given commands that need no model; prints exit codes and the heavy modules loaded.
WALK = """
import json, sys
import typer
from typer.testing import CliRunner
from stages.cli import app

def walk(cmd, path):
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():  # a group (typer has its own click inside)
        yield from walk(sub, [*path, name])

runner = CliRunner()
codes = {}
for path in walk(typer.main.get_command(app), []):
    codes[" ".join([*path, "--help"])] = runner.invoke(app, [*path, "--help"]).exit_code
for argv in json.loads(sys.argv[1]):
    r = runner.invoke(app, argv)
    codes[" ".join(argv)] = r.exit_code if r.exit_code == 0 else f"{r.exit_code}: {r.output[-300:]}"
print(json.dumps({"codes": codes, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def fresh(code: str, *args: str) -> dict:
    """Run `code` (HEAVY defined) in a new interpreter from the repository root; its JSON line on stdout."""
    proc = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}", *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_of_every_command_and_model_free_commands_import_no_heavy_module(tmp_path):
    env_dir = os.environ.get("THINKRL_DATA_DIR")
    data = Path(env_dir) if env_dir else REPO.parent / "shared" / "data"
    data = data if data.is_dir() else tmp_path  # the real files when there are some: reading them is the work
    p = tmp_path / "p"
    commands = [["data", "list", "--data-dir", str(data)], ["data", "list", "--json", "--data-dir", str(data)],
                ["data", "prepare", "arith", "--n", "4", "--seed", "1", "--out", str(p)],
                ["inspect", str(p)], ["inspect", str(p), "--json"]]
    got = fresh(WALK, json.dumps(commands))
    codes = got["codes"]
    for name in ("--help", "sample --help", "run --help", "data --help", "data list --help",
                 "model warmstart --help", "train --help", "demo --help", "report --help"):
        assert name in codes  # the walk reached every level
    assert len(codes) >= 21
    assert {k: v for k, v in codes.items() if v != 0} == {}
    assert got["heavy"] == []


@pytest.mark.parametrize("code", [
    "import thinkrl",
    "import thinkrl.artifacts",
    # every stage's settings made and checked (names of engines, devices, dtypes, schemes, schedules...)
    "from thinkrl.experiment import ExperimentConfig; from thinkrl.warmstart import WarmstartConfig; "
    "ExperimentConfig(); WarmstartConfig()",
])
def test_library_imports_no_heavy_module(code):
    got = fresh(f"import json, sys\n{code}\nprint(json.dumps({{'heavy': sorted(m for m in HEAVY if m in sys.modules)}}))")
    assert got["heavy"] == []
