"""Tests for thinkrl.experiment and `thinkrl run`: TOML settings and their precedence, a tiny end-to-end run
with the documented layout, reruns that redo exactly what a changed setting touches, a round with nothing
to learn, `--report-to tensorboard` read back with TensorBoard's reader, and kill -9 of the real CLI in each
stage, whose rerun must equal an uninterrupted run (its TensorBoard log too: each step once).

The policy is the tiny preset (`thinkrl.models.init_model`) warm-started here for ~100 steps on one-step
ArithChain problems with values <= 9: enough to be right about half the time, so rounds really train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import cli, cli_command, cli_env
from safetensors.torch import load_file
from tb_events import scalars

from thinkrl.artifacts import MANIFEST, input_path, read_manifest, read_table, write_artifact
from thinkrl.demo import demo_configs
from thinkrl.errors import ThinkrlError
from thinkrl.experiment import ExperimentConfig, docs_markdown, round_seed
from thinkrl.rounds import held_out_arith_questions, round_problems, run_experiment
from thinkrl.tasks.arith import ArithConfig, generate_problems

REPO = Path(__file__).resolve().parents[1]
EASY = ArithConfig(min_ops=1, max_ops=1, max_value=9, addsub_max=9)


def easy_problems(n: int, seed: int) -> list[dict]:
    return [{"problem_id": p.problem_id, "source": "easy", "question": p.question, "answer": str(p.answer),
             "meta": "{}"} for p in generate_problems(n, seed, EASY)]


@pytest.fixture(scope="module")
def easy(tmp_path_factory, one_thread) -> dict[str, Path]:
    """A briefly warm-started tiny policy, and problems artifacts for training and held-out eval."""
    from thinkrl.models import init_model
    from thinkrl.warmstart import WarmstartConfig, warmstart

    d = tmp_path_factory.mktemp("easy")
    init_model("tiny", d / "init", seed=0)
    warmstart(d / "init", d / "policy", WarmstartConfig(steps=100, warmup_steps=20, corpus_size=1500, threads=1),
              arith_cfg=EASY)
    write_artifact(d / "train-problems", "prepare", {"easy": 11}, {"problems": easy_problems(40, 11)})
    write_artifact(d / "eval-problems", "prepare", {"easy": 12}, {"problems": easy_problems(8, 12)})
    return {"policy": d / "policy", "init": d / "init", "train": d / "train-problems", "eval": d / "eval-problems"}


def tiny_settings(easy: dict[str, Path], **kw) -> dict:
    base = dict(policy=str(easy["policy"]), rounds=2, prompts_per_round=2, n=4, max_tokens=24, part_size=1,
                prompts_per_step=1, save_every=1, problems=str(easy["train"]), eval_bench=str(easy["eval"]),
                eval_problems=4, eval_k=2)
    return {**base, **kw}


def manifests(run_dir: Path) -> dict[str, bytes]:
    return {str(p.parent.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob(MANIFEST))}


# --------------------------------------------------------------------------------------------- settings
def test_toml_good_file_and_round_trip(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text('policy = "runs/x"\nscheme = "outcome"\nrounds = 3\nlr = 2e-4\nalpha = 1\n'
                 'eval_initial = false\n# a comment\n')
    cfg = ExperimentConfig.load(f)
    assert (cfg.policy, cfg.scheme, cfg.rounds, cfg.lr, cfg.eval_initial) == ("runs/x", "outcome", 3, 2e-4, False)
    assert isinstance(cfg.alpha, float) and cfg.alpha == 1.0
    assert cfg.n == ExperimentConfig().n  # unset keys keep their defaults
    saved = tmp_path / "config.toml"
    saved.write_text(cfg.to_toml())
    assert ExperimentConfig.load(saved) == cfg  # the resolved config.toml reads back as the same settings


@pytest.mark.parametrize("text, words", [
    ('policy = "x"\nlearning_rat = 0.1\n', ["unknown setting", "learning_rat"]),
    ('policy = "x"\n[train]\nlr = 0.1\n', ["table [train]", "flat"]),
    ('policy = "x"\nrounds = "three"\n', ["`rounds`", "int"]),
    ('policy = "x"\nrounds = 0\n', ["`rounds`", ">= 1"]),
    ('policy = "x"\nscheme = "magic"\n', ["magic", "outcome"]),
    ('policy = "x\n', ["invalid TOML"]),
    ('policy = "x"\njudge = "gpt"\n', ["unknown judge", "gpt"]),
    ('policy = "x"\njudge = "openai:http://h"\n', ["judge_model"]),
    ('policy = "x"\nsplitter = "judge"\n', ["splitter `judge`", "generative"]),
    ('policy = "x"\nsplitter = "words"\n', ["unknown splitter", "words"]),
    ('policy = "x"\njudge = "hf:d"\njudge_prompt = "mine"\n', ["unknown judge prompt", "mine"]),
    ('policy = "x"\nengine = "sglang"\n', ["unknown engine", "sglang"]),
    ('policy = "x"\ndtype = "int4"\n', ["unknown dtype", "int4"]),
])
def test_toml_errors_name_the_key(tmp_path, text, words):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ThinkrlError) as e:
        ExperimentConfig.load(f)
    for w in words:
        assert w in str(e.value)
    assert "\n" not in str(e.value)


def test_override_precedence(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text('policy = "p"\nlr = 2e-4\nrounds = 3\n')
    cfg = ExperimentConfig.load(f, overrides={"lr": 3e-4, "rounds": None, "scheme": "step"})
    assert (cfg.lr, cfg.rounds, cfg.scheme) == (3e-4, 3, "step")  # option > file > default; None = not given
    assert ExperimentConfig.load(None, {"policy": "q"}).lr == ExperimentConfig().lr
    with pytest.raises(ThinkrlError, match="unknown setting `bogus`"):
        ExperimentConfig.load(f, overrides={"bogus": 1})


def test_docs_and_example_file_are_current():
    assert (REPO / "data/experiments/README.md").read_text() == docs_markdown(), \
        "stale: run `python -m thinkrl.experiment > data/experiments/README.md`"
    cfg = ExperimentConfig.load(REPO / "data/experiments/arith-grpo-vs-tp.toml")
    assert cfg == demo_configs("default", "runs/demo/start")["thought"], "the example file is the demo's settings"


def test_arith_round_problems_are_seeded_and_held_out():
    cfg = ExperimentConfig(policy="p", prompts_per_round=30, seed=3)
    r0, r0b, r1 = round_problems(cfg, None, 0), round_problems(cfg, None, 0), round_problems(cfg, None, 1)
    assert r0.equals(r0b) and not set(r0["question"]) & set(r1["question"])
    assert r0.height == 30 and not set(r0["question"]) & held_out_arith_questions()
    src = pl.DataFrame(easy_problems(5, 0))
    cyc = ExperimentConfig(policy="p", prompts_per_round=3, problems="x")
    assert round_problems(cyc, src, 1)["problem_id"].to_list() == [src["problem_id"][i] for i in (3, 4, 0)]


def test_demo_configs_differ_only_in_scheme_and_seed():
    cfgs = demo_configs("quick", "runs/demo/start", seeds=(0, 1), schemes=("outcome", "thought"))
    assert list(cfgs) == ["outcome-s0", "outcome-s1", "thought-s0", "thought-s1"]
    ref = cfgs["outcome-s0"]
    for c in cfgs.values():
        assert {f for f in ExperimentConfig.__dataclass_fields__ if getattr(c, f) != getattr(ref, f)} <= {"scheme", "seed"}


# --------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(easy, tmp_path_factory) -> tuple[ExperimentConfig, Path, dict]:
    cfg = ExperimentConfig(**tiny_settings(easy))
    run_dir = tmp_path_factory.mktemp("run") / "exp"
    return cfg, run_dir, run_experiment(cfg, run_dir)


def test_layout_and_summary(tiny_run):
    cfg, run_dir, summary = tiny_run
    assert ExperimentConfig.load(run_dir / "config.toml") == cfg
    assert json.loads((run_dir / "status.json").read_text())["stage"] == "done"
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary.to_dict()))
    assert summary.missing == [] and summary.scheme == cfg.scheme and summary.seed == cfg.seed
    for r in range(2):
        rd = run_dir / f"round-{r:03d}"
        for sub, stage in [("problems", "prepare"), ("rollouts", "sample"), ("judgments", "judge"),
                           ("thoughts", "segment"), ("train", "train"), ("eval", "eval")]:
            assert read_manifest(rd / sub)["stage"] == stage
        assert (rd / "train/policy/model.safetensors").is_file() and (rd / "train/state").is_dir()
        assert not list(rd.rglob("_parts"))
        ro = read_table(rd / "rollouts", "rollouts")
        assert ro.height == 8 and set(ro["round"]) == {r}
        want_policy = cfg.policy if r == 0 else str(run_dir / "round-000/train/policy")
        assert set(ro["policy"]) == {want_policy}  # round r samples with round r-1's policy
    m = read_manifest(run_dir / "eval-initial")  # inputs are stored relative to the artifact
    assert input_path(run_dir / "eval-initial", m, "policy").resolve() == Path(cfg.policy).resolve()
    assert [e.where for e in summary.evals] == ["eval-initial", "round-000/eval", "round-001/eval"]
    assert [e.samples_consumed for e in summary.evals] == [0, 8, 16]
    assert all(r.train_steps > 0 for r in summary.rounds) and summary.samples_consumed == 16
    assert [r.round for r in summary.rounds] == [0, 1]


def test_stages_by_hand_skip_the_work_of_thinkrl_run(tiny_run, run_cli):
    """One step function per stage: the stage commands given the run's settings build the same skip keys as
    `thinkrl run`, so each finds the run's artifact up to date and recomputes nothing."""
    cfg, run_dir, _ = tiny_run
    rd = run_dir / "round-000"
    before = manifests(run_dir)
    commands = [
        ["sample", "--policy", cfg.policy, "--problems", rd / "problems", "-n", cfg.n, "--max-tokens", cfg.max_tokens,
         "--part-size", cfg.part_size, "--seed", cfg.seed, "--round", 0, "--out", rd / "rollouts"],
        ["judge", "--rollouts", rd / "rollouts", "--judge", cfg.judge, "--out", rd / "judgments"],
        ["segment", "--rollouts", rd / "rollouts", "--judgments", rd / "judgments", "--scheme", cfg.scheme,
         "--alpha", cfg.alpha, "--out", rd / "thoughts"],
        ["train", "--policy", cfg.policy, "--thoughts", rd / "thoughts", "--prompts-per-step", cfg.prompts_per_step,
         "--save-every", cfg.save_every, "--seed", round_seed(cfg.seed, 0, "train"), "--out", rd / "train"],
    ]
    for args in commands:
        rc, out, err = run_cli([str(a) for a in args])
        assert rc == 0 and "up to date" in out + err, (args[0], out, err)
    assert manifests(run_dir) == before


def test_one_engine_per_run_reloads_each_rounds_weights(easy, tmp_path, monkeypatch):
    """The round loop builds its generation engine once and loads every new policy's weights into it (vLLM
    is not restarted each round); the samples are those of the other run that built fresh engines."""
    import thinkrl.engine as engines
    from thinkrl.engine.hf import HFEngine

    built, reloaded, real_load, real_reload = [], [], engines.load_engine, HFEngine.reload
    monkeypatch.setattr(engines, "load_engine", lambda *a, **k: built.append(a[1]) or real_load(*a, **k))
    monkeypatch.setattr(HFEngine, "reload", lambda self, p: reloaded.append(p) or real_reload(self, p))
    cfg = ExperimentConfig(**tiny_settings(easy, eval_every=1))
    run_experiment(cfg, tmp_path / "r")
    assert len(built) == 1 and len(reloaded) == 2  # eval-initial + round 0 on the start; round 1, final eval
    monkeypatch.setattr(HFEngine, "reload", lambda self, p: (_ for _ in ()).throw(AssertionError("no reload")))
    a = read_table(tmp_path / "r" / "round-001" / "rollouts", "rollouts")
    fresh = load_engine_rollouts(tmp_path, cfg)
    assert a.drop("policy").equals(fresh.drop("policy"))


def load_engine_rollouts(tmp_path: Path, cfg: ExperimentConfig):
    """Round 1's rollouts sampled by a fresh engine on round 0's trained policy (thinkrl sample's own function)."""
    from thinkrl.sampling import run_sample_stage

    run_sample_stage(tmp_path / "r" / "round-001" / "problems", tmp_path / "r" / "round-000" / "train" / "policy",
                     tmp_path / "fresh", cfg.sample_config(1))
    return read_table(tmp_path / "fresh", "rollouts")


def test_one_policy_trains_across_rounds(tiny_run):
    """Round 1 continues round 0's AdamW state, global step and lr schedule (before: a fresh AdamW per round,
    steps restarting at 1)."""
    cfg, run_dir, _ = tiny_run
    t = [read_table(run_dir / f"round-{r:03d}/train", "train_metrics") for r in range(2)]
    n0, n1 = t[0].height, t[1].height
    assert t[0]["step"].to_list() == list(range(1, n0 + 1))
    assert t[1]["step"].to_list() == list(range(n0 + 1, n0 + n1 + 1))     # global steps
    assert set(t[0]["round"]) == {0} and set(t[1]["round"]) == {1}
    opt = torch.load(run_dir / "round-001/train/state/trainer.pt", weights_only=True)
    assert {float(v["step"]) for v in opt["optimizer"]["state"].values()} == {float(n0 + n1)}
    m = read_manifest(run_dir / "round-001/train")
    assert m["inputs"]["continue_from"]["path"] == "../../round-000/train/state"  # relative to the artifact
    assert input_path(run_dir / "round-001/train", m, "continue_from") == run_dir / "round-000/train/state"
    assert m["config"]["schedule_steps"] is None                            # constant lr: no length
    # a decaying schedule spans every round's planned steps: 2 rounds x (2 prompts / 1 per step)
    assert replace(cfg, schedule="cosine").train_config(1).schedule_steps == 4


def test_lora_rounds_train_fresh_adapters_on_each_merged_policy(easy, tmp_path, monkeypatch):
    """`lora_r` in a run: each round trains adapters on the previous round's merged policy (a plain checkpoint the
    engine samples from), the global step carries on, AdamW's moments do not; with β > 0 round 0's reference is
    the policy's own base (no second model loaded) and round 1's the start policy, loaded."""
    pytest.importorskip("peft")
    import thinkrl.trainer as trainer

    loaded, real_load = [], trainer._load_model
    monkeypatch.setattr(trainer, "_load_model", lambda path, *a: loaded.append(Path(path)) or real_load(path, *a))
    cfg = ExperimentConfig(**tiny_settings(easy, lora_r=2, lora_targets="q_proj,v_proj", beta=0.1, eval_every=0,
                                           lr=1e-2))
    run_experiment(cfg, tmp_path / "r")
    t = [read_table(tmp_path / "r" / f"round-{r:03d}/train", "train_metrics") for r in range(2)]
    n0, n1 = t[0].height, t[1].height
    assert n0 > 0 and n1 > 0 and t[1]["step"].to_list() == list(range(n0 + 1, n0 + n1 + 1))
    s1 = torch.load(tmp_path / "r/round-001/train/state/trainer.pt", weights_only=True)
    assert {float(v["step"]) for v in s1["optimizer"]["state"].values()} == {float(n1)}
    start = Path(cfg.policy)
    assert loaded == [start, tmp_path / "r/round-000/train/policy", start]   # policy, policy + its reference
    for r in range(2):
        w = load_file(tmp_path / "r" / f"round-{r:03d}/train/policy/model.safetensors")
        assert w.keys() == load_file(start / "model.safetensors").keys()
    assert read_manifest(tmp_path / "r/round-001/train")["config"]["lora_r"] == 2


def test_rerun_skips_and_alpha_reruns_segment_onward(tiny_run):
    cfg, run_dir, _ = tiny_run
    before = manifests(run_dir)
    run_experiment(cfg, run_dir)
    assert manifests(run_dir) == before  # nothing reran
    run_experiment(ExperimentConfig(**{**cfg.__dict__, "alpha": 0.5}), run_dir)
    after = manifests(run_dir)
    same = {k for k in before if after.get(k) == before[k]}
    for k in ("eval-initial", "round-000/problems", "round-000/rollouts", "round-000/judgments",
              "round-001/problems"):
        assert k in same, k
    for k in ("round-000/thoughts", "round-000/train"):
        assert k not in same, k
    assert read_manifest(run_dir / "round-000/thoughts")["config"]["alpha"] == 0.5
    # round 1 reruns from sampling on exactly when round 0's policy weights changed
    policy_changed = "round-000/eval" not in same
    assert ("round-001/rollouts" not in same) == policy_changed
    run_experiment(cfg, run_dir)  # back to the first settings: reruns segment onward again, no crash
    assert read_manifest(run_dir / "round-000/thoughts")["config"]["alpha"] == cfg.alpha
    # settings the stages do not depend on rerun nothing: threads, and reply settings of generative judges
    # while the judge is `rule`
    before = manifests(run_dir)
    run_experiment(replace(cfg, threads=2, judge_max_tokens=77, judge_prompt="intrinsic-v1"), run_dir)
    assert manifests(run_dir) == before


def test_evals_follow_the_settings(tiny_run):
    """Evals that earlier settings made and these do not ask for leave the run and its summary."""
    cfg, run_dir, _ = tiny_run
    trained = {k: v for k, v in manifests(run_dir).items() if not k.endswith("eval") and "eval-" not in k}
    s = run_experiment(replace(cfg, eval_initial=False, eval_every=2), run_dir)  # 2 rounds: eval after round 1
    assert not (run_dir / "eval-initial").exists() and not (run_dir / "round-000/eval").exists()
    assert [e.where for e in s.evals] == ["round-001/eval"] and s.status == "complete"
    s = run_experiment(replace(cfg, eval_every=0), run_dir)
    assert s.evals == [] and s.status == "complete" and not list(run_dir.glob("round-*/eval"))
    s = run_experiment(replace(cfg, rounds=1), run_dir)  # fewer rounds: round 1 is kept on disk, not reported
    assert [r.round for r in s.rounds] == [0] and (run_dir / "round-001/train").is_dir()
    s = run_experiment(cfg, run_dir)  # the first settings again: only the evals are redone
    assert [e.where for e in s.evals] == ["eval-initial", "round-000/eval", "round-001/eval"]
    # nothing but evals reran (with a constant lr the number of rounds is no part of the train keys)
    after = manifests(run_dir)
    assert {k: after[k] for k in trained} == trained


def assert_tensorboard_is_the_artifacts(run_dir: Path) -> None:
    """runs/NAME/tb read back with TensorBoard's own EventAccumulator: every train_metrics column of every round
    at its global step, once, with the table's value (as float32); each eval's scores at the step its round
    ended (eval-initial at 0)."""
    got = scalars(run_dir / "tb")
    rounds = sorted(run_dir.glob("round-*"))
    tm = pl.concat([read_table(rd / "train", "train_metrics") for rd in rounds])
    assert tm.height > 0
    for col in tm.columns:
        if col != "step":
            want = [(s, float(np.float32(v))) for s, v in zip(tm["step"], tm[col].cast(pl.Float64), strict=True)]
            assert got.pop(f"train/{col}") == want, col
    ends = [0] + [int(read_table(rd / "train", "train_metrics")["step"].max()) for rd in rounds]
    evals = {}
    for where, step in zip(["eval-initial"] + [f"{rd.name}/eval" for rd in rounds], ends, strict=True):
        for r in read_table(run_dir / where, "eval_summary").to_dicts():
            for score, col in [("avg", "avg_at_k"), ("pass", "pass_at_k"), ("maj", "maj_at_k")]:
                evals.setdefault(f"eval/{r['benchmark']}/{score}@{r['k']}", []).append((step, float(np.float32(r[col]))))
            for col in ("mean_tokens", "truncation_rate"):
                evals.setdefault(f"eval/{r['benchmark']}/{col}", []).append((step, float(np.float32(r[col]))))
    assert got == evals


def test_report_to_tensorboard_writes_the_train_metrics_and_evals(easy, tmp_path):
    """`thinkrl run --report-to tensorboard` (the real command, in process): the event files hold the per-step
    figures of train_metrics and the per-round evals; a rerun, every stage up to date, rewrites the same log from
    the artifacts (nothing twice). A train artifact records where it was logged."""
    from typer.testing import CliRunner

    from stages.cli import app

    args = ["run", "--name", "tb", "--runs-dir", str(tmp_path), "--report-to", "tensorboard"]
    for k, v in tiny_settings(easy).items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    for _ in range(2):
        r = CliRunner().invoke(app, args, env={"THINKRL_NO_PROGRESS": "1"})
        assert r.exit_code == 0, r.output
        assert_tensorboard_is_the_artifacts(tmp_path / "tb")
    assert read_manifest(tmp_path / "tb/round-001/train")["metrics"]["tracking"] == {
        "report_to": "tensorboard", "log_dir": str(tmp_path / "tb/tb")}
    assert "report_to = \"tensorboard\"" in (tmp_path / "tb/config.toml").read_text()


def test_eval_seed_unset_is_the_seed_and_keeps_the_eval_config():
    """eval_seed None evaluates with `seed`, the EvalConfig (so the eval key) of the runs made before it existed."""
    cfg = ExperimentConfig(policy="p", seed=3)
    assert cfg.eval_seed is None and cfg.eval_config() == replace(cfg, eval_seed=3).eval_config()
    assert cfg.eval_config().seed == 3 and "eval_seed" not in asdict(cfg.eval_config())
    fixed = replace(cfg, eval_seed=7)
    assert fixed.eval_config() == replace(cfg.eval_config(), seed=7) and fixed.sample_config(0).seed == 3
    assert fixed.train_config(0) == cfg.train_config(0)         # only the evals take it


def test_eval_seed_shares_the_eval_noise_across_seeds(easy, tmp_path):
    """Runs of seeds 0 and 1 with one eval_seed evaluate the start policy with byte-identical samples (seed 1's
    eval-initial is seed 0's, unset eval_seed being `seed`); without it seed 1 samples its evals otherwise."""
    base = tiny_settings(easy, rounds=1, eval_every=1, eval_temperature=1.0)
    runs = {"s0": dict(seed=0), "s1-e0": dict(seed=1, eval_seed=0), "s1": dict(seed=1)}
    for name, kw in runs.items():
        run_experiment(ExperimentConfig(**base, **kw), tmp_path / name)
    samples = {name: (tmp_path / name / "eval-initial/eval_samples/part-00000.parquet").read_bytes() for name in runs}
    assert samples["s1-e0"] == samples["s0"] and samples["s1"] != samples["s0"]
    keys = {name: read_manifest(tmp_path / name / "eval-initial")["config"] for name in runs}
    assert keys["s1-e0"] == keys["s0"] != keys["s1"]
    rollouts = {name: read_table(tmp_path / name / "round-000/rollouts", "rollouts") for name in runs}
    assert rollouts["s1-e0"].equals(rollouts["s1"]) and not rollouts["s1"].equals(rollouts["s0"])  # training: `seed`


def test_pairing_schemes_of_one_seed_share_problems_seeds_and_round_0(easy, tmp_path):
    """Two runs differing only in scheme draw the same problems every round with the same sampling seed per
    (round, problem, sample); round 0 samples the same start policy, so its rollouts (and a noisy judge's
    labels of them) are byte-identical. Later rounds sample differently trained policies: same problems and
    seeds, other completions."""
    for r in range(3):  # arith problems come from (seed, round), whatever the scheme
        a, b = (round_problems(ExperimentConfig(policy="p", seed=5, scheme=s), None, r) for s in ("outcome", "thought"))
        assert a.equals(b)
    runs = {s: tmp_path / s for s in ("outcome", "thought")}
    for s, d in runs.items():
        run_experiment(ExperimentConfig(**tiny_settings(easy, scheme=s, judge="noisy:0.3", eval_every=0)), d)

    def part_bytes(d: Path, sub: str, table: str) -> list[bytes]:
        return [f.read_bytes() for f in sorted((d / sub / table).glob("*.parquet"))]

    o, t = runs["outcome"], runs["thought"]
    for sub, table in [("problems", "problems"), ("rollouts", "rollouts"), ("judgments", "judgments")]:
        assert part_bytes(o / "round-000", sub, table) == part_bytes(t / "round-000", sub, table), sub
    assert part_bytes(o / "round-001", "problems", "problems") == part_bytes(t / "round-001", "problems", "problems")
    ids = ["rollout_id", "problem_id", "sample_idx", "round", "seed"]
    r1 = [read_table(d / "round-001/rollouts", "rollouts").sort("rollout_id") for d in (o, t)]
    assert r1[0].select(ids).equals(r1[1].select(ids))       # the same seed per (round, problem, sample)
    assert r1[0]["policy"].to_list() != r1[1]["policy"].to_list()  # each run's own round-0 policy


def test_round_with_nothing_to_learn_carries_the_policy(easy, tmp_path):
    """The random-init policy is never right: every group is all wrong, every advantage zero."""
    cfg = ExperimentConfig(**tiny_settings(easy, policy=str(easy["init"]), rounds=2, eval_every=0,
                                           eval_initial=False, scheme="outcome"))
    summary = run_experiment(cfg, tmp_path / "run")
    assert [r.carried_forward for r in summary.rounds] == [True, True]
    m = read_manifest(tmp_path / "run/round-000/train")
    assert m["metrics"]["carried_forward"] and read_table(tmp_path / "run/round-000/train", "train_metrics",
                                                          allow_empty=True).height == 0
    a, b = load_file(easy["init"] / "model.safetensors"), load_file(tmp_path / "run/round-001/train/policy/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary.evals == []


def test_an_eval_of_a_round_that_trained_nothing_is_no_second_point(easy, tmp_path):
    """The random-init policy learns nothing in round 0: its eval is of the start policy at global step 0 again,
    so the tracker keeps eval-initial's point alone."""
    cfg = ExperimentConfig(**tiny_settings(easy, policy=str(easy["init"]), rounds=1, scheme="outcome",
                                           report_to="tensorboard"))
    run_experiment(cfg, tmp_path / "run")
    got = scalars(tmp_path / "run/tb")
    assert got and all(k.startswith("eval/") and [s for s, _ in v] == [0] for k, v in got.items())


def test_a_run_never_writes_into_a_model_directory(easy, tmp_path):
    """runs/NAME that is a model (or an artifact) directory is refused before anything is written: the name
    of a run that shares its policy's name must not turn the model directory into a run."""
    import shutil

    model = tmp_path / "runs" / "m"
    shutil.copytree(easy["policy"], model)
    before = sorted(p.name for p in model.iterdir())
    with pytest.raises(ThinkrlError, match="holds a model or an artifact, not a run"):
        run_experiment(ExperimentConfig(**tiny_settings(easy, policy=str(model))), model)
    assert sorted(p.name for p in model.iterdir()) == before


def test_missing_policy_is_one_line_error(tmp_path, run_cli):
    with pytest.raises(ThinkrlError, match="set `policy`"):
        run_experiment(ExperimentConfig(), tmp_path / "r")
    rc, _, err = run_cli(["run", "--name", "x", "--runs-dir", tmp_path, "--policy", tmp_path / "nope"])
    assert rc == 2 and err.startswith("error:") and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # the inputs are checked before the run directory (and its lock) is made
    # a relative path that is not there names the directory it was taken relative to (runs from elsewhere)
    (tmp_path / "exp.toml").write_text('policy = "runs/demo/start"\n')
    rc, _, err = run_cli(["run", tmp_path / "exp.toml", "--name", "x", "--runs-dir", tmp_path])
    assert rc == 2 and "runs/demo/start: expected a model directory" in err and f"working directory ({Path.cwd()})" in err


def test_run_lock_excludes_a_second_run_and_is_removed_however_the_run_ends(tmp_path):
    from thinkrl.rounds import _run_lock

    d = tmp_path / "r"
    with _run_lock(d):
        assert (d / ".lock").is_file()
        with pytest.raises(ThinkrlError, match="another `thinkrl run` is working"), _run_lock(d):
            pass
        assert (d / ".lock").is_file()  # the refused run leaves the holder's lock alone
    assert not (d / ".lock").exists()
    with pytest.raises(ThinkrlError, match="boom"), _run_lock(d):
        raise ThinkrlError("boom")
    assert not (d / ".lock").exists()
    (d / ".lock").write_text("")  # left by a run killed with -9: taken over, then removed
    with _run_lock(d):
        pass
    assert list(d.iterdir()) == []


# --------------------------------------------------------------------------------------------- kill -9
KILL_ROUND = 1
PARTS = {"sample": "rollouts/_parts/rollouts", "judge": "judgments/_parts/judgments",
         "eval": "eval/_parts/eval_samples"}


def kill_args(easy: dict[str, Path]) -> list[str]:
    """A budget where every stage of a round takes long enough (many parts, many steps) to be caught."""
    s = tiny_settings(easy, prompts_per_round=8, n=8, judge_part_size=1, eval_problems=8, eval_k=4,
                      report_to="tensorboard")
    args = ["run", "--name", "exp", "--runs-dir", "runs"]
    for k, v in s.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def run_env() -> dict[str, str]:
    return cli_env({"THINKRL_NO_PROGRESS": "1"})


def cli_to_end(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run `thinkrl *args` to the end; (returncode, stderr)."""
    r = cli(args, cwd=cwd, env={"THINKRL_NO_PROGRESS": "1"}, timeout=600)
    return r.returncode, r.stderr


def in_stage(run_dir: Path, stage: str) -> bool:
    """The run is inside `stage` of round KILL_ROUND and the stage has written part of its work."""
    try:
        st = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return False
    if st.get("round") != KILL_ROUND or st.get("stage") != stage:
        return False
    rd = run_dir / f"round-{KILL_ROUND:03d}"
    if stage in PARTS:
        return any((rd / PARTS[stage]).glob("*.parquet"))
    if stage == "train":
        return (rd / "train/state/trainer.pt").is_file()
    return True


STAGE_OUT = {"sample": "rollouts", "judge": "judgments", "segment": "thoughts", "train": "train", "eval": "eval"}


def kill_in(stage: str, cwd: Path, args: list[str]) -> None:
    """Start `thinkrl run`, freeze it (SIGSTOP) as soon as it is in `stage`, check that the stage has not
    finished (no manifest yet), then kill -9 it."""
    run_dir = cwd / "runs/exp"
    with open(cwd / "killed.log", "w") as log:
        proc = subprocess.Popen(cli_command(args), cwd=cwd, env=run_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not in_stage(run_dir, stage):
                assert proc.poll() is None, f"run ended (rc {proc.returncode}) before stage {stage}: " \
                                            f"{(cwd / 'killed.log').read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"stage {stage} never reached"
                time.sleep(0.003)
            os.kill(proc.pid, signal.SIGSTOP)
            out = run_dir / f"round-{KILL_ROUND:03d}" / STAGE_OUT[stage]
            assert not (out / MANIFEST).exists(), f"stage {stage} finished before the kill: raise its budget"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def final_artifacts(run_dir: Path) -> dict[str, object]:
    """Parquet bytes of every table (train_metrics without its timing columns) and the final weights."""
    out: dict[str, object] = {}
    for f in sorted(run_dir.rglob("*.parquet")):
        rel = str(f.relative_to(run_dir))
        if "_parts" in rel:
            out[rel] = "leftover part file"
        elif f.parent.name == "train_metrics":
            out[rel] = pl.read_parquet(f).drop("seconds", "mfu", "tokens_per_s").to_dicts()
        else:
            out[rel] = f.read_bytes()
    w = load_file(run_dir / "round-001/train/policy/model.safetensors")
    out["final weights"] = {k: v.numpy().tobytes() for k, v in w.items()}
    return out


@pytest.fixture(scope="module")
def reference(easy, tmp_path_factory) -> dict[str, object]:
    cwd = tmp_path_factory.mktemp("ref")
    rc, err = cli_to_end(kill_args(easy), cwd=cwd)
    assert rc == 0, err[-3000:]
    return final_artifacts(cwd / "runs/exp")


@pytest.mark.parametrize("stage", [pytest.param("sample", marks=pytest.mark.slow),
                                   pytest.param("judge", marks=pytest.mark.slow),
                                   pytest.param("segment", marks=pytest.mark.slow),
                                   "train",  # the default suite keeps one case (~25 s with the reference run)
                                   pytest.param("eval", marks=pytest.mark.slow)])
def test_kill9_in_each_stage_then_rerun_equals_uninterrupted(stage, easy, reference, tmp_path):
    args = kill_args(easy)
    kill_in(stage, tmp_path, args)
    rc, err = cli_to_end(args, cwd=tmp_path)
    assert rc == 0, err[-3000:]
    got = final_artifacts(tmp_path / "runs/exp")
    assert got.keys() == reference.keys()
    for k in reference:
        assert got[k] == reference[k], f"{k} differs after kill -9 in {stage} and a rerun"
    assert_tensorboard_is_the_artifacts(tmp_path / "runs/exp")  # each step once, no event of the killed run


def test_a_run_ending_never_removes_another_runs_lock(tmp_path):
    """Before: the run that ended unlinked whatever `.lock` was there, so after someone deleted its file and a
    second run locked a new one, a third run got in beside the second."""
    from thinkrl.rounds import _run_lock

    a = _run_lock(tmp_path)
    a.__enter__()
    (tmp_path / ".lock").unlink()                 # someone deletes A's lock file while A holds it
    b = _run_lock(tmp_path)
    b.__enter__()                                 # B locks a new file
    a.__exit__(None, None, None)
    assert (tmp_path / ".lock").exists()          # A left B's file alone
    with pytest.raises(ThinkrlError, match="another `thinkrl run` is working"), _run_lock(tmp_path):
        pass                                      # so a third run is refused
    b.__exit__(None, None, None)
    assert not (tmp_path / ".lock").exists()


# --------------------------------------------------------------------------------------------- torchrun
def test_a_run_under_torchrun_on_two_ranks_is_the_one_process_run(easy, tmp_path):
    """`torchrun --nproc-per-node 2 -m stages.cli run` (gloo): every stage over 2 ranks, sample, judge, segment and
    eval as 2 shards merged into one artifact, train as DDP. Its tables are the 1-process run's byte for byte
    (train_metrics up to its timing columns and float rounding), its weights equal to 1e-5, and rank 0 alone wrote
    the run's files (one lock, one summary)."""
    s = tiny_settings(easy, rounds=1, prompts_per_round=4, threads=1, report_to="none", eval_initial=True)
    (tmp_path / "exp.toml").write_text(replace(ExperimentConfig(), **s).to_toml())
    args = ["run", str(tmp_path / "exp.toml"), "--name", "exp", "--runs-dir", "runs"]  # torchrun reads --n itself
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
    rc, err = cli_to_end(args, cwd=tmp_path / "one")
    assert rc == 0, err[-3000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "stages.cli", *args],
                          cwd=tmp_path / "two", env={**run_env(), "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("training samples") == 1                 # rank 0 reports, rank 1 does not
    one, two = tmp_path / "one/runs/exp", tmp_path / "two/runs/exp"
    tables = sorted(str(f.relative_to(one)) for f in one.rglob("*.parquet"))
    assert tables == sorted(str(f.relative_to(two)) for f in two.rglob("*.parquet"))
    assert any("eval-initial" in t for t in tables) and any("round-000/eval" in t for t in tables)
    for t in tables:
        a, b = pl.read_parquet(one / t), pl.read_parquet(two / t)
        if t.startswith("round-000/train/"):  # trained on 2 ranks: the same up to float rounding
            assert_close_tables(a.drop("seconds", "mfu", "tokens_per_s", strict=False),
                                b.drop("seconds", "mfu", "tokens_per_s", strict=False), t)
        else:
            assert (one / t).read_bytes() == (two / t).read_bytes(), t
    wa = load_file(one / "round-000/train/policy/model.safetensors")
    wb = load_file(two / "round-000/train/policy/model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0) for k in wa)
    assert read_manifest(two / "round-000/rollouts")["metrics"]["shards"] == 2
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert len(sb["rounds"]) == 1 and [e["avg_at_k"] for e in sb["evals"]] == [e["avg_at_k"] for e in sa["evals"]]
    assert not (two / ".lock").exists()


def assert_close_tables(a: pl.DataFrame, b: pl.DataFrame, where: str) -> None:
    """Equal columns, floats (and lists of floats) to rtol 1e-5, everything else exactly."""
    assert a.columns == b.columns and a.height == b.height, where
    for col in a.columns:
        if a[col].dtype.is_float() or a[col].dtype == pl.List(pl.Float32):
            x, y = a[col].explode().to_numpy(), b[col].explode().to_numpy()
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"{where}: {col}")
        else:
            assert a[col].to_list() == b[col].to_list(), f"{where}: {col}"


def test_a_run_goes_on_over_the_markers_of_an_earlier_sharded_invocation(easy, tmp_path):
    """A run stopped while its stages ran as shards (say 3 ranks, then settings changed) leaves markers; the next
    `thinkrl run` holds the run's lock, so it forgets them instead of refusing the parts as another job's."""
    cfg = replace(ExperimentConfig(), **tiny_settings(easy, rounds=1, report_to="none", eval_every=0))
    parts = tmp_path / "exp" / "round-000" / "rollouts" / "_parts"
    (parts / "_shards").mkdir(parents=True)
    (parts / "key").write_text("the key of other settings\n")
    (parts / "_shards" / "shard-1-of-3.json").write_text(json.dumps(
        {"stage": "sample", "key": "k", "parts_key": "k", "k": 1, "n": 3, "parts": [], "all_parts": []}))
    summary = run_experiment(cfg, tmp_path / "exp")
    assert len(summary.rounds) == 1 and (tmp_path / "exp" / "round-000" / "rollouts" / MANIFEST).is_file()
