"""Tests for thinkrl.tracking: the backend registry and its one-line errors, TensorBoard for real (event files read
back with tensorboard's own EventAccumulator, a second session rewriting the first), wandb and trackio through
fake modules in sys.modules (offline by default, the ledger that keeps a resumed session from sending a step twice).
`thinkrl run --report-to tensorboard` end to end is in tests/test_experiment.py."""

from __future__ import annotations

import os
import shutil
import sys
import types

import pytest
from tb_events import scalars

from thinkrl.errors import ThinkrlError
from thinkrl.tracking import LEDGER, Tracker, TrackingConfig, eval_scalars, train_scalars


def row(step: int, loss: float) -> dict:
    return {"step": step, "round": 0, "loss": loss, "skipped": False, "tokens": 10 * step}


EVAL = [{"benchmark": "arith", "k": 4, "avg_at_k": 0.5, "pass_at_k": 0.75, "maj_at_k": 0.5, "mean_tokens": 20.0,
         "truncation_rate": 0.25}]


def test_scalars_by_name():
    assert train_scalars(row(3, 0.5)) == {"train/round": 0.0, "train/loss": 0.5, "train/skipped": 0.0,
                                          "train/tokens": 30.0}
    assert eval_scalars(EVAL) == {"eval/arith/avg@4": 0.5, "eval/arith/pass@4": 0.75, "eval/arith/maj@4": 0.5,
                                  "eval/arith/mean_tokens": 20.0, "eval/arith/truncation_rate": 0.25}


def test_unknown_backend_and_missing_package_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ThinkrlError, match="--report-to 'tensorbord': expected one of none, tensorboard, wandb, trackio"):
        TrackingConfig("tensorbord")
    monkeypatch.setattr("thinkrl.tracking.installed", lambda module: False)
    with pytest.raises(ThinkrlError, match=r"--report-to tensorboard needs the `tensorboard` package: pip install "
                                           r"tensorboard \(or --report-to none\)"):
        Tracker("tensorboard", tmp_path, "x")
    Tracker("none", tmp_path, "x").train_row(row(1, 0.5))  # none needs nothing and writes nothing
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_folder_holds_each_step_once_with_the_latest_values(tmp_path):
    """Session 1 logs steps 1-3 and an eval at 3. Session 2 (a rerun after a changed setting) replays 1-3 with a
    new value at 3 and adds 4: the folder holds session 2's history alone. With session 1's file put back where it
    sorts first (a TensorBoard server that had read it), the START event of purge_step 0 still drops its events."""
    log = tmp_path / "tb"
    with Tracker("tensorboard", tmp_path, "exp") as t:
        assert not log.exists()                            # opened at the first thing sent
        for s, v in [(1, 0.5), (2, 0.25), (3, 0.125)]:
            t.train_row(row(s, v))
        t.eval_scores(EVAL, step=3)
    first = scalars(log)
    assert first["train/loss"] == [(1, 0.5), (2, 0.25), (3, 0.125)] and first["eval/arith/avg@4"] == [(3, 0.5)]
    old = next(log.glob("events.out.tfevents.*"))
    shutil.copy(old, tmp_path / "old-events")

    with Tracker("tensorboard", tmp_path, "exp") as t:
        for s, v in [(1, 0.5), (2, 0.25), (3, 0.0625), (4, 1.0)]:
            t.train_row(row(s, v))
    want = [(1, 0.5), (2, 0.25), (3, 0.0625), (4, 1.0)]
    files = list(log.glob("events.out.tfevents.*"))
    assert len(files) == 1 and files[0] != old
    assert scalars(log)["train/loss"] == want and "eval/arith/avg@4" not in scalars(log)
    shutil.copy(tmp_path / "old-events", log / "events.out.tfevents.0000000001.old")
    assert scalars(log)["train/loss"] == want


class FakeRun:
    def __init__(self, calls: list):
        self.calls = calls

    def log(self, data, step):
        self.calls.append(("log", step, dict(data)))

    def finish(self):
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch) -> list:
    calls: list = []
    mod = types.ModuleType("wandb")

    def init(**kw):
        calls.append(("init", kw))
        return FakeRun(calls)

    mod.init = init
    monkeypatch.setitem(sys.modules, "wandb", mod)
    unset(monkeypatch, "WANDB_MODE")
    return calls


def unset(monkeypatch, name: str) -> None:
    """`name` absent from the environment during the test, and absent again after it even when the code under
    test set it (a plain delenv of an unset variable would not undo that)."""
    monkeypatch.setenv(name, "")
    monkeypatch.delenv(name)


def test_wandb_offline_by_default_resumes_its_run_and_sends_each_step_once(tmp_path, fake_wandb, monkeypatch):
    with Tracker("wandb", tmp_path, "exp", {"lr": 1e-4}) as t:
        t.train_row(row(1, 0.5))
        t.train_row(row(2, 0.25))
        t.eval_scores(EVAL, step=2)
    assert os.environ["WANDB_MODE"] == "offline"
    init = fake_wandb[0][1]
    assert init["resume"] == "allow" and init["name"] == "exp" and init["config"] == {"lr": 1e-4}
    assert init["dir"] == str(tmp_path) and (tmp_path / "wandb" / LEDGER).is_file()
    with Tracker("wandb", tmp_path, "exp") as t:           # a resumed session replays 1-2, then goes on
        for s in (1, 2, 3):
            t.train_row(row(s, 0.5))
        t.eval_scores(EVAL, step=2)
        t.eval_scores(EVAL, step=3)
    inits = [c[1] for c in fake_wandb if c[0] == "init"]
    assert inits[1]["id"] == inits[0]["id"]               # the same run, resumed
    logs = [(c[1], sorted(c[2])[0]) for c in fake_wandb if c[0] == "log"]
    assert logs == [(1, "train/loss"), (2, "train/loss"), (2, "eval/arith/avg@4"),
                    (3, "train/loss"), (3, "eval/arith/avg@4")]
    assert [c[0] for c in fake_wandb].count("finish") == 2
    monkeypatch.setenv("WANDB_MODE", "online")             # the user's choice is kept
    Tracker("wandb", tmp_path / "other", "exp").train_row(row(1, 0.5))
    assert os.environ["WANDB_MODE"] == "online"


def test_trackio_is_local_in_the_output_directory(tmp_path, monkeypatch):
    calls: list = []
    mod = types.ModuleType("trackio")
    mod.init = lambda **kw: calls.append(("init", kw))
    mod.log = lambda data, step: calls.append(("log", step, dict(data)))
    mod.finish = lambda: calls.append(("finish",))
    monkeypatch.setitem(sys.modules, "trackio", mod)
    unset(monkeypatch, "TRACKIO_DIR")
    for steps in ((1, 2), (1, 2, 3)):
        with Tracker("trackio", tmp_path, "exp") as t:
            for s in steps:
                t.train_row(row(s, float(s)))
    assert os.environ["TRACKIO_DIR"] == str(tmp_path / "trackio")
    assert [c[1]["resume"] for c in calls if c[0] == "init"] == ["allow", "allow"]
    assert [(c[1], c[2]["train/loss"]) for c in calls if c[0] == "log"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert [c[0] for c in calls].count("finish") == 2
