"""Bad input through the real CLI (in process): exit 2, one line `error: ...` naming what was wrong, no traceback,
and every byte of the output directory as it was (DESIGN §7).

    PYTHONPATH=. .venv/bin/python -m pytest -q tests/test_bad_input.py

One table, `CASES`: each case builds its argv in its own tmp directory (from the session's `inputs`: a tiny policy,
problems, rollouts, thoughts, broken model directories and the outputs of interrupted runs) and names a fragment
of the message it expects. `existing` puts one of those outputs where the case writes (`out`, or a run directory),
so the case also proves that a bad option or a broken model leaves an interrupted run's finished parts alone.
To add a case (a broken artifact, a bad option), append a `Case`; a new kind of input goes in `Inputs`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from char_tokenizer import char_tokenizer
from typer.testing import CliRunner

from stages.cli import app
from thinkrl.artifacts import table_file

ENV = {"THINKRL_NO_PROGRESS": "1", "COLUMNS": "200"}


# --------------------------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    root: Path
    policy: Path
    problems: Path
    rollouts: Path
    thoughts: Path
    models: dict[str, Path]      # broken model directories by what is wrong with them (`model(name)`)
    outputs: dict[str, Path]     # prepared outputs a case can start from (`Case.existing`)
    judgments: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)  # broken artifacts by what is wrong (`art(name)`)

    def model(self, name: str) -> Path:
        return self.models[name]

    def art(self, name: str) -> Path:
        return self.artifacts[name]


# where a prepared output goes in a case's tmp directory (default: out)
EXISTING_AT = {"run-interrupted": "runs/x"}

SAMPLE = ["-n", "2", "--max-tokens", "6", "--part-size", "1"]         # the interrupted sample run's options
EVAL = ["-k", "2", "--max-tokens", "6", "--part-size", "1", "--limit", "3", "--bench", "arith"]
JUDGE = ["--judge", "rule", "--part-size", "2"]
TRAIN = ["--prompts-per-step", "1", "--save-every", "1"]


def _tiny_policy(d: Path) -> Path:
    """A tiny Llama (hidden 32, 2 layers) with the one-char-per-token tokenizer: quick to load and to sample."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    (d / "thinkrl.json").write_text('{"template": "raw"}\n')
    return d


def _broken_models(policy: Path, root: Path) -> dict[str, Path]:
    """A copy of the policy per defect: truncated or garbage weights, corrupt or missing config.json and tokenizer
    files, a weight missing, weights of other shapes, an unknown architecture, a missing shard, empty, a file."""
    from safetensors.torch import load_file, save_file

    def copy(name: str) -> Path:
        d = root / name
        shutil.copytree(policy, d)
        return d

    def edit_config(d: Path, **changes) -> None:
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **changes}))

    m = {}
    d = m["truncated"] = copy("truncated")
    weights = d / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)  # a copy cut short (full disk, killed download)
    d = m["garbage"] = copy("garbage")
    (d / "model.safetensors").write_bytes(os.urandom(4096))
    d = m["header-offsets"] = copy("header-offsets")  # a header whose offsets are not numbers
    header = json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [32], "data_offsets": [0, "128"]}}).encode()
    (d / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(128))
    d = m["config-corrupt"] = copy("config-corrupt")
    (d / "config.json").write_text('{"model_type": "llama",')
    d = m["config-list"] = copy("config-list")
    (d / "config.json").write_text("[1, 2]")
    d = m["no-config"] = copy("no-config")
    (d / "config.json").unlink()
    d = m["no-tokenizer"] = copy("no-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink()
    d = m["tokenizer-corrupt"] = copy("tokenizer-corrupt")
    (d / "tokenizer.json").write_text("garbage{")
    d = m["no-weights"] = copy("no-weights")
    (d / "model.safetensors").unlink()
    d = m["missing-tensor"] = copy("missing-tensor")
    tensors = load_file(d / "model.safetensors")
    tensors.pop("model.layers.0.mlp.up_proj.weight")
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    d = m["wrong-shapes"] = copy("wrong-shapes")
    edit_config(d, intermediate_size=48)
    d = m["unknown-architecture"] = copy("unknown-architecture")
    edit_config(d, model_type="nonesuch")
    d = m["missing-shard"] = copy("missing-shard")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "model.safetensors", "lm_head.weight": "model-00002.safetensors"}}))
    m["empty"] = root / "empty"
    m["empty"].mkdir()
    m["a-file"] = root / "a-file"
    m["a-file"].write_text("not a model\n")
    m["missing"] = root / "missing"
    return m


def _broken_artifacts(inp: Inputs, root: Path) -> dict[str, Path]:
    """Copies of good artifacts, each broken one way. Most are edited as a buggy writer would leave them (the
    manifest hashes the edited file: `rewrite_table`), so the read gets past the sha256 check to what the table
    holds; `*-changed` is edited behind its manifest's back."""
    import polars as pl
    from artifact_edit import rehash, rewrite_table

    def copy(src: Path, name: str) -> Path:
        d = root / name
        shutil.copytree(src, d)
        return d

    def edit(src: Path, table: str, name: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
        d = a[name] = copy(src, name)
        rewrite_table(d, table, change(pl.read_parquet(d / table_file(table))))

    f32 = pl.Float32
    a: dict[str, Path] = {}
    ro, th, ju, pr = inp.rollouts, inp.thoughts, inp.judgments, inp.problems
    edit(ro, "rollouts", "rollouts-dup-ids", lambda df: df.with_columns(pl.lit(df["rollout_id"][0]).alias("rollout_id")))
    edit(ro, "rollouts", "rollouts-nan-logprobs", lambda df: df.with_columns(pl.col("logprobs").list.eval(
        pl.element() * float("nan"))))
    edit(ro, "rollouts", "rollouts-bad-finish", lambda df: df.with_columns(pl.lit("abort").alias("finish_reason")))
    edit(ro, "rollouts", "rollouts-logprobs-length", lambda df: df.with_columns(
        pl.concat_list([pl.col("logprobs"), pl.lit(-1.0, dtype=f32)]).alias("logprobs")))
    d = a["rollouts-changed"] = copy(ro, "rollouts-changed")      # edited behind its manifest's back
    pl.read_parquet(d / table_file("rollouts")).with_columns(pl.lit(True).alias("correct")).write_parquet(
        d / table_file("rollouts"))
    d = a["rollouts-no-manifest"] = copy(ro, "rollouts-no-manifest")
    (d / "_manifest.json").unlink()
    edit(ju, "judgments", "judgments-bad-label", lambda df: df.with_columns(pl.lit("wrongish").alias("label")))
    edit(ju, "judgments", "judgments-dup", lambda df: pl.concat([df, df.head(1)]))
    edit(th, "advantages", "thoughts-nan", lambda df: df.with_columns(pl.col("advantages").list.eval(
        pl.element() * float("nan"))))
    edit(th, "advantages", "thoughts-inf", lambda df: df.with_columns(
        pl.lit([float("inf")] * 3, dtype=pl.List(f32)).alias("advantages")))
    edit(th, "advantages", "thoughts-length", lambda df: df.with_columns(
        pl.lit([1.0], dtype=pl.List(f32)).alias("advantages")))
    edit(th, "advantages", "thoughts-temperature-zero", lambda df: df.with_columns(
        pl.lit(0.0, dtype=f32).alias("temperature")))
    edit(th, "advantages", "thoughts-dup-ids", lambda df: df.with_columns(pl.lit("p0/s0").alias("rollout_id")))
    edit(pr, "problems", "problems-dup-ids", lambda df: df.with_columns(pl.lit("arith-x").alias("problem_id")))
    edit(pr, "problems", "problems-missing-column", lambda df: df.drop("answer"))
    d = a["problems-corrupt"] = copy(pr, "problems-corrupt")
    (d / table_file("problems")).write_bytes(b"PAR1 not parquet at all PAR1")
    rehash(d, "problems")
    return a


def _interrupt_after(calls: int, fn: Callable) -> Callable:
    """fn, raising KeyboardInterrupt (what Ctrl-C raises) when it is called for the (calls + 1)-th time."""
    seen = [0]

    def wrapped(*args, **kwargs):
        seen[0] += 1
        if seen[0] > calls:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)

    return wrapped


def _interrupted_outputs(inp: Inputs, root: Path) -> dict[str, Path]:
    """Outputs of runs stopped by Ctrl-C (KeyboardInterrupt inside the very stage functions the commands call,
    with the options of SAMPLE/EVAL/JUDGE/TRAIN), each holding finished part files or trainer state and no
    manifest; and a run directory killed while its round 0 sampled."""
    from thinkrl.engine import load_engine
    from thinkrl.evaluate import EvalConfig, run_eval_stage
    from thinkrl.experiment import ExperimentConfig
    from thinkrl.judge.judging import JudgeConfig, run_judge_stage
    from thinkrl.problems import problem_sets
    from thinkrl.sampling import SampleConfig, run_sample_stage
    from thinkrl.trainer import TrainConfig
    from thinkrl.training import run_train_stage

    out = {}

    def engine():
        eng = load_engine("hf", inp.policy, dtype="float32", device="cpu")
        eng.generate = _interrupt_after(2, eng.generate)  # two parts done, Ctrl-C in the third
        return eng

    out["sample-interrupted"] = root / "sample-interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_sample_stage(inp.problems, inp.policy, out["sample-interrupted"],
                         SampleConfig(n=2, max_tokens=6, part_size=1), load=engine)
    out["eval-interrupted"] = root / "eval-interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_eval_stage(problem_sets("arith", root, 3), inp.policy, out["eval-interrupted"],
                       EvalConfig(k=2, max_tokens=6, part_size=1, limit=3), load=engine)
    out["judge-interrupted"] = root / "judge-interrupted"
    with pytest.raises(KeyboardInterrupt):  # progress(1) per judged rollout: part 0 (2 rollouts) is written
        run_judge_stage(inp.rollouts, out["judge-interrupted"], JudgeConfig(part_size=2),
                        progress=_interrupt_after(3, lambda k: None))
    out["train-interrupted"] = root / "train-interrupted"
    with pytest.raises(KeyboardInterrupt):  # 4 steps planned, checkpoints after steps 1 and 2, Ctrl-C after 2
        run_train_stage(inp.policy, inp.thoughts, out["train-interrupted"],
                        TrainConfig(prompts_per_step=1, save_every=1), progress=_interrupt_after(1, lambda *a: None))
    run = out["run-interrupted"] = root / "run-interrupted"
    (run / "round-000").mkdir(parents=True)
    (run / "config.toml").write_text(ExperimentConfig(policy=str(inp.policy)).to_toml())
    shutil.copytree(out["sample-interrupted"], run / "round-000" / "rollouts")
    out["problems-artifact"] = inp.problems
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, one_thread) -> Inputs:
    from thinkrl.artifacts import write_artifact
    from thinkrl.problems import arith_task
    from thinkrl.sampling import SampleConfig, run_sample_stage

    root = tmp_path_factory.mktemp("bad-input")
    policy = _tiny_policy(root / "policy")
    problems = root / "problems"
    write_artifact(problems, "prepare", {}, {"problems": arith_task(n=4, seed=3)})
    rollouts = root / "rollouts"
    run_sample_stage(problems, policy, rollouts, SampleConfig(n=2, max_tokens=6, part_size=2))
    thoughts = root / "thoughts"  # the advantages table of 4 groups of 2 (the trainer recomputes log pi_old)
    rows = [{"rollout_id": f"p{p}/s{s}", "problem_id": f"p{p}", "round": 0, "prompt_ids": [5, 6, 7 + p],
             "completion_ids": [8, 9, 10], "advantages": [1.0 - 2 * s] * 3, "behaviour_logprobs": None,
             "temperature": 1.0, "max_tokens": 6, "outcome_advantage": 1.0 - 2 * s, "correct": s == 0,
             "finish_reason": "stop", "incorrect_tokens": 0}
            for p in range(4) for s in range(2)]
    write_artifact(thoughts, "segment", {}, {"advantages": rows})
    inp = Inputs(root, policy, problems, rollouts, thoughts, _broken_models(policy, root / "models"), {})
    inp.outputs = _interrupted_outputs(inp, root / "outputs")
    from thinkrl.judge.judging import JudgeConfig, run_judge_stage

    inp.judgments = root / "judgments"
    run_judge_stage(rollouts, inp.judgments, JudgeConfig(max_unknown=1.0))
    inp.artifacts = _broken_artifacts(inp, root / "artifacts")
    return inp


# --------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Inputs, Path], list]   # (the session's inputs, this case's tmp directory) -> argv
    fragment: str                            # in the one `error: ...` line
    existing: str | None = None              # a prepared output put where the case writes (Inputs.outputs)


def sample(*extra, policy: str | None = None, problems: str | None = None):
    return lambda i, t: ["sample", "--policy", i.model(policy) if policy else i.policy,
                         "--problems", i.art(problems) if problems else i.problems, "--out", t / "out", *SAMPLE,
                         *extra]


def eval_(*extra, policy: str | None = None):
    return lambda i, t: ["eval", "--policy", i.model(policy) if policy else i.policy, "--out", t / "out", *EVAL,
                         *extra]


def judge(*extra, judge_model: str | None = None, rollouts: str | None = None):
    return lambda i, t: ["judge", "--rollouts", i.art(rollouts) if rollouts else i.rollouts, "--out", t / "out",
                         *JUDGE, *(["--judge", f"hf:{i.model(judge_model)}"] if judge_model else []), *extra]


def segment(rollouts: str | None = None, judgments: str | None = None, scheme: str = "thought"):
    return lambda i, t: ["segment", "--rollouts", i.art(rollouts) if rollouts else i.rollouts,
                         "--judgments", i.art(judgments) if judgments else i.judgments, "--scheme", scheme,
                         "--out", t / "out"]


def train(*extra, policy: str | None = None, ref: str | None = None, thoughts: str | None = None):
    return lambda i, t: ["train", "--policy", i.model(policy) if policy else i.policy,
                         "--thoughts", i.art(thoughts) if thoughts else i.thoughts,
                         "--out", t / "out", *TRAIN,
                         *(["--beta", "0.1", "--ref-policy", i.model(ref)] if ref else []), *extra]


def warmstart(*extra, policy: str | None = None):
    return lambda i, t: ["model", "warmstart", "--policy", i.model(policy) if policy else i.policy,
                         "--out", t / "out", "--steps", "2", "--corpus-size", "8", *extra]


def prepare(*extra):
    return lambda i, t: ["data", "prepare", "arith", "--out", t / "out", "--n", "4", *extra]


def judge_eval(*extra, judge_model: str | None = None, rollouts: str | None = None):
    return lambda i, t: ["judge-eval", "--rollouts", i.art(rollouts) if rollouts else i.rollouts, "--out", t / "out",
                         *(["--judge", f"hf:{i.model(judge_model)}"] if judge_model else []), *extra]


def run(toml: str | bytes | None = None, *extra):
    """`thinkrl run` of an experiment file (its text; POLICY: the tiny policy) into tmp/runs/x."""
    def argv(i: Inputs, t: Path) -> list:
        args = ["run", "--name", "x", "--runs-dir", t / "runs"]
        if toml is not None:
            f = t / "exp.toml"
            if isinstance(toml, bytes):
                f.write_bytes(toml)
            else:
                f.write_text(toml.replace("POLICY", str(i.policy)).replace("MODELS", str(i.root / "models")))
            args.insert(1, f)
        else:
            args += ["--policy", i.policy]
        return [*args, *extra]

    return argv


def after(prepare: Callable[[Path], object], argv: Callable[[Inputs, Path], list]) -> Callable[[Inputs, Path], list]:
    """argv, once prepare(tmp) has made in the case's tmp directory what the case needs."""
    def build(i: Inputs, t: Path) -> list:
        prepare(t)
        return argv(i, t)

    return build


def _file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file, not a directory\n")


CASES = [
    # -- invalid options: refused before anything is read or written (an interrupted run's parts stay)
    Case("sample-n-zero", sample("-n", "0"), "-n must be >= 1, got 0", "sample-interrupted"),
    Case("sample-n-negative", sample("-n", "-3"), "-n must be >= 1, got -3"),
    Case("sample-max-tokens-zero", sample("--max-tokens", "0"), "--max-tokens must be >= 1, got 0",
         "sample-interrupted"),
    Case("sample-temperature-negative", sample("--temperature", "-0.5"), "--temperature must be >= 0, got -0.5",
         "sample-interrupted"),
    Case("sample-temperature-nan", sample("--temperature", "nan"), "--temperature must be a finite number",
         "sample-interrupted"),
    Case("sample-top-p-zero", sample("--top-p", "0"), "--top-p must be in (0, 1], got 0", "sample-interrupted"),
    Case("sample-top-p-above-one", sample("--top-p", "1.5"), "--top-p must be in (0, 1], got 1.5"),
    Case("sample-part-size-zero", sample("--part-size", "0"), "--part-size must be >= 1, got 0",
         "sample-interrupted"),
    Case("sample-limit-zero", sample("--limit", "0"), "--limit must be >= 1, got 0"),
    Case("sample-seed-negative", sample("--seed", "-1"), "--seed must be >= 0, got -1"),
    Case("sample-grade-timeout-zero", sample("--grade-timeout-s", "0"), "--grade-timeout-s must be > 0, got 0",
         "sample-interrupted"),
    Case("sample-gpu-memory-above-one", sample("--engine", "vllm", "--gpu-memory-utilization", "1.5"),
         "--gpu-memory-utilization must be in (0, 1], got 1.5", "sample-interrupted"),
    Case("sample-tensor-parallel-zero", sample("--engine", "vllm", "--tensor-parallel-size", "0"),
         "--tensor-parallel-size must be >= 1, got 0"),
    Case("sample-shard-out-of-range", sample("--shard", "2/2"), "--shard '2/2': need 0 <= k < n",
         "sample-interrupted"),
    Case("judge-part-size-zero", judge("--part-size", "0"), "--part-size must be >= 1, got 0", "judge-interrupted"),
    Case("judge-concurrency-zero", judge("--concurrency", "0"), "--concurrency must be >= 1, got 0"),
    Case("judge-timeout-zero", judge("--timeout", "0"), "--timeout must be > 0, got 0"),
    Case("judge-retries-negative", judge("--retries", "-1"), "--retries must be >= 0, got -1"),
    Case("judge-max-tokens-zero", judge("--max-tokens", "0"), "--max-tokens must be >= 1, got 0"),
    Case("judge-max-unknown-above-one", judge("--max-unknown", "1.5"), "--max-unknown must be in [0, 1], got 1.5",
         "judge-interrupted"),
    Case("judge-temperature-negative", judge("--temperature", "-0.5"), "--temperature must be >= 0, got -0.5"),
    Case("judge-extra-body-not-json", judge("--extra-body", "{chat_template_kwargs: 1}"),
         "--extra-body must be a JSON object, e.g. '{\"chat_template_kwargs\": {\"enable_thinking\": false}}'; got "
         "invalid JSON (Expecting property name", "judge-interrupted"),
    Case("judge-extra-body-not-an-object", judge("--extra-body", '["top_k", 5]'),
         "--extra-body must be a JSON object, e.g. '{\"chat_template_kwargs\": {\"enable_thinking\": false}}'; got "
         "an array"),
    Case("judge-extra-body-own-key", judge("--extra-body", '{"max_tokens": 99}'),
         "--extra-body must not set `max_tokens`: thinkrl sets it itself (it is the judge's own setting)",
         "judge-interrupted"),
    Case("judge-extra-body-template-kwargs-not-object", judge("--extra-body", '{"chat_template_kwargs": true}'),
         "--extra-body must hold `chat_template_kwargs` as a JSON object"),
    Case("judge-hf-extra-body-request-key",
         lambda i, t: ["judge", "--rollouts", i.rollouts, "--out", t / "out", *JUDGE, "--judge", f"hf:{i.policy}",
                       "--extra-body", '{"top_p": 0.9}'],
         "a local hf: judge sends no request: of extra_body only chat_template_kwargs applies", "judge-interrupted"),
    Case("segment-alpha-negative",
         lambda i, t: ["segment", "--rollouts", i.rollouts, "--scheme", "outcome", "--out", t / "out", "--alpha", "-1"],
         "--alpha must be >= 0, got -1"),
    Case("train-lr-nan", train("--lr", "nan"), "--lr must be a finite number", "train-interrupted"),
    Case("train-lr-negative", train("--lr", "-1e-4"), "--lr must be >= 0, got -0.0001"),
    Case("train-epochs-zero", train("--epochs", "0"), "--epochs must be >= 1, got 0", "train-interrupted"),
    Case("train-prompts-per-step-zero", train("--prompts-per-step", "0"), "--prompts-per-step must be >= 1, got 0"),
    Case("train-eps-low-one", train("--eps-low", "1"), "--eps-low must be in [0, 1), got 1", "train-interrupted"),
    Case("train-eps-high-negative", train("--eps-high", "-0.1"), "--eps-high must be >= 0, got -0.1"),
    Case("train-beta-negative", train("--beta", "-1"), "--beta must be >= 0, got -1"),
    Case("train-betas-one", train("--betas", "0.9", "1.0"), "--betas must be in [0, 1), got 1"),
    Case("train-grad-clip-negative", train("--grad-clip", "-1"), "--grad-clip must be >= 0, got -1"),
    Case("train-weight-decay-negative", train("--weight-decay", "-0.1"), "--weight-decay must be >= 0, got -0.1"),
    Case("train-micro-batch-zero", train("--micro-batch-tokens", "0"), "--micro-batch-tokens must be >= 1, got 0"),
    Case("train-max-steps-negative", train("--max-steps", "-1"), "--max-steps must be >= 0, got -1",
         "train-interrupted"),
    Case("train-logprob-chunk-negative", train("--logprob-chunk", "-1"), "--logprob-chunk must be >= 0, got -1"),
    Case("train-report-to-unknown", train("--report-to", "tensorbord"),
         "--report-to 'tensorbord': expected one of none, tensorboard, wandb, trackio", "train-interrupted"),
    *([Case("train-report-to-not-installed", train("--report-to", "wandb"),
            "--report-to wandb needs the `wandb` package: pip install 'thinkrl[wandb]'", "train-interrupted")]
      if importlib.util.find_spec("wandb") is None else []),
    Case("eval-k-zero", eval_("-k", "0"), "-k must be >= 1, got 0", "eval-interrupted"),
    Case("eval-temperature-negative", eval_("--temperature", "-1"), "--temperature must be >= 0, got -1",
         "eval-interrupted"),
    Case("eval-top-p-zero", eval_("--top-p", "0"), "--top-p must be in (0, 1], got 0", "eval-interrupted"),
    Case("eval-limit-zero", eval_("--limit", "0"), "--limit must be >= 1, got 0"),
    Case("judge-eval-limit-zero", judge_eval("--limit", "0"), "--limit must be >= 1, got 0"),
    Case("judge-eval-max-tokens-zero", judge_eval("--max-tokens", "0"), "--max-tokens must be >= 1, got 0"),
    Case("judge-eval-temperature-negative", judge_eval("--temperature", "-1"), "--temperature must be >= 0, got -1"),
    Case("judge-eval-extra-body-not-json", judge_eval("--extra-body", "enable_thinking=false"),
         "--extra-body must be a JSON object"),
    Case("prepare-n-zero", prepare("--n", "0"), "--n must be >= 1, got 0", "problems-artifact"),
    Case("prepare-limit-negative", prepare("--limit", "-2"), "--limit must be >= 1, got -2", "problems-artifact"),
    Case("prepare-min-ops-zero", prepare("--min-ops", "0"), "--min-ops must be >= 1, got 0"),
    Case("prepare-min-ops-above-max", prepare("--min-ops", "5", "--max-ops", "2"),
         "--min-ops 5 is more than --max-ops 2", "problems-artifact"),
    Case("warmstart-lr-zero", warmstart("--lr", "0"), "--lr must be > 0, got 0"),
    Case("warmstart-steps-zero", warmstart("--steps", "0"), "--steps must be >= 1, got 0"),
    Case("warmstart-minutes-negative", warmstart("--minutes", "-1"), "--minutes must be > 0, got -1"),
    Case("warmstart-batch-size-zero", warmstart("--batch-size", "0"), "--batch-size must be >= 1, got 0"),
    Case("warmstart-p-err-above-one", warmstart("--p-err", "1.5"), "--p-err must be in [0, 1], got 1.5"),
    Case("warmstart-threads-negative", warmstart("--threads", "-1"), "--threads must be >= 0, got -1"),
    Case("run-rounds-zero-option", run(None, "--rounds", "0"), "--rounds must be >= 1, got 0", "run-interrupted"),
    Case("run-lr-negative-option", run(None, "--lr", "-1"), "--lr must be >= 0, got -1", "run-interrupted"),
    Case("run-eval-k-zero-option", run(None, "--eval-k", "0"), "--eval-k must be >= 1, got 0"),
    Case("run-judge-temperature-negative-option", run(None, "--judge-temperature", "-1"),
         "--judge-temperature must be >= 0, got -1", "run-interrupted"),
    Case("run-judge-extra-body-not-json-option", run(None, "--judge-extra-body", "{'top_k': 5}"),
         "--judge-extra-body must be a JSON object", "run-interrupted"),
    Case("run-judge-extra-body-own-key-option", run(None, "--judge-extra-body", '{"model": "other"}'),
         "--judge-extra-body must not set `model`: thinkrl sets it itself"),
    Case("run-report-to-unknown", run(None, "--report-to", "tb"), "--report-to 'tb': expected one of none",
         "run-interrupted"),
    *([Case("run-report-to-not-installed", run(None, "--report-to", "trackio"),
            "--report-to trackio needs the `trackio` package", "run-interrupted")]
      if importlib.util.find_spec("trackio") is None else []),
    # -- a bad experiment file: parsed and checked before the run directory is made or locked
    Case("run-toml-syntax", run('policy = "POLICY\n'), "invalid TOML", "run-interrupted"),
    Case("run-toml-not-utf8", run(b'policy = "\xff"\n'), "not valid UTF-8"),
    Case("run-toml-unknown-key", run('policy = "POLICY"\nlearning_rat = 0.1\n'), "unknown setting `learning_rat`",
         "run-interrupted"),
    Case("run-toml-table", run('policy = "POLICY"\n[train]\nlr = 0.1\n'), "table [train] is not allowed"),
    Case("run-toml-extra-body-array", run('policy = "POLICY"\njudge_extra_body = ["top_k", 5]\n'),
         "`judge_extra_body` must be a table or a JSON object's text, got list", "run-interrupted"),
    Case("run-toml-extra-body-table-stream", run('policy = "POLICY"\n[judge_extra_body]\nstream = true\n'),
         "`judge_extra_body` must not set `stream`: thinkrl reads whole replies, not streams", "run-interrupted"),
    Case("run-toml-extra-body-bad-text", run('policy = "POLICY"\njudge_extra_body = "{top_k = 5}"\n'),
         "`judge_extra_body` must be a JSON object"),
    Case("run-toml-wrong-type", run('policy = "POLICY"\nrounds = "three"\n'), "`rounds` must be int, got str",
         "run-interrupted"),
    Case("run-toml-temperature-negative", run('policy = "POLICY"\ntemperature = -1\n'),
         "`temperature` must be >= 0, got -1", "run-interrupted"),
    Case("run-toml-max-unknown-above-one", run('policy = "POLICY"\njudge_max_unknown = 2.0\n'),
         "`judge_max_unknown` must be in [0, 1], got 2"),
    Case("run-toml-lr-negative", run('policy = "POLICY"\nlr = -0.5\n'), "`lr` must be >= 0, got -0.5"),
    Case("run-toml-missing-tensor-policy", run('policy = "MODELS/missing-tensor"\n'),
         "the weights lack 1 tensor(s) of the model, e.g. model.layers.0.mlp.up_proj.weight", "run-interrupted"),
    Case("run-toml-wrong-shapes-policy", run('policy = "MODELS/wrong-shapes"\n'),
         "the weights do not fit config.json", "run-interrupted"),
    Case("run-toml-unknown-architecture-judge", run('policy = "POLICY"\njudge = "hf:MODELS/unknown-architecture"\n'),
         "could not build the model of its config.json", "run-interrupted"),
    Case("run-dir-is-a-file", after(lambda t: _file(t / "runs" / "x"), run(None)), "x: is a file; a run is a directory"),
    Case("run-toml-missing-policy", run('policy = "MODELS/missing"\n'), "missing: expected a model directory"),
    Case("run-toml-truncated-policy", run('policy = "MODELS/truncated"\n'),
         "cannot load model.safetensors (truncated or corrupt"),
    Case("run-toml-garbage-judge-model", run('policy = "POLICY"\njudge = "hf:MODELS/garbage"\n'),
         "garbage: cannot load model.safetensors (truncated or corrupt", "run-interrupted"),
    Case("run-toml-unknown-eval-set", run('policy = "POLICY"\neval_bench = "nonesuch"\n'),
         "unknown problem set 'nonesuch'", "run-interrupted"),
    # -- broken model directories: one line naming the directory, before the output is touched
    Case("model-truncated-safetensors", sample(policy="truncated"),
         "truncated: cannot load model.safetensors (truncated or corrupt:", "sample-interrupted"),
    Case("model-safetensors-offsets-not-numbers", sample(policy="header-offsets"),
         "header-offsets: cannot load model.safetensors (truncated or corrupt: its header is not a safetensors header)",
         "sample-interrupted"),
    Case("model-garbage-safetensors", eval_(policy="garbage"),
         "garbage: cannot load model.safetensors (truncated or corrupt:", "eval-interrupted"),
    Case("model-corrupt-config", train(policy="config-corrupt"), "config-corrupt: config.json: not valid JSON",
         "train-interrupted"),
    Case("model-config-not-an-object", sample(policy="config-list"), "config.json: expected a JSON object, got a list"),
    Case("model-missing-config", judge(judge_model="no-config"), "no-config: expected a Hugging Face model directory "
         "with config.json", "judge-interrupted"),
    Case("model-missing-tokenizer", sample(policy="no-tokenizer"), "no-tokenizer: no tokenizer files",
         "sample-interrupted"),
    Case("model-corrupt-tokenizer", warmstart(policy="tokenizer-corrupt"),
         "tokenizer-corrupt: tokenizer.json: not valid JSON"),
    Case("model-no-weights", eval_(policy="no-weights"), "no-weights: expected weights (*.safetensors)"),
    Case("model-missing-tensor", sample(policy="missing-tensor"),
         "missing-tensor: the weights lack 1 tensor(s) of the model, e.g. model.layers.0.mlp.up_proj.weight",
         "sample-interrupted"),
    Case("model-wrong-shapes", train(policy="wrong-shapes"), "wrong-shapes: the weights do not fit config.json",
         "train-interrupted"),
    Case("model-unknown-architecture", eval_(policy="unknown-architecture"),
         "unknown-architecture: could not load the model (ValueError: ", "eval-interrupted"),
    Case("model-missing-shard", sample(policy="missing-shard"),
         "missing-shard: model.safetensors.index.json names 1 missing weight file(s)"),
    Case("model-empty-dir", eval_(policy="empty"), "empty: expected a Hugging Face model directory with config.json"),
    Case("model-missing-dir", sample(policy="missing"), "missing: expected a model directory", "sample-interrupted"),
    Case("model-is-a-file", train(policy="a-file"), "a-file: is a file; expected a model directory"),
    Case("model-truncated-reference", train(ref="truncated"), "truncated: cannot load model.safetensors",
         "train-interrupted"),
    Case("model-garbage-judge", judge(judge_model="garbage"), "garbage: cannot load model.safetensors",
         "judge-interrupted"),
    Case("model-judge-eval-judge-missing", judge_eval(judge_model="missing"), "missing: expected a model directory"),
    Case("model-warmstart-truncated", warmstart(policy="truncated"), "truncated: cannot load model.safetensors"),
    Case("judge-tokenizer-missing",
         lambda i, t: ["judge", "--rollouts", i.rollouts, "--out", t / "out", *JUDGE, "--tokenizer", t / "nope"],
         "nope: expected a model or tokenizer directory, found nothing there", "judge-interrupted"),
    # -- an output path that is a file; the trainer's own state damaged
    Case("sample-out-is-a-file", after(lambda t: _file(t / "out"), sample()),
         "out: is a file; the output of a stage is a directory"),
    Case("train-out-is-a-file", after(lambda t: _file(t / "out"), train()),
         "out: is a file; the output of a stage is a directory"),
    Case("train-state-damaged", after(lambda t: (t / "out" / "state" / "trainer.pt").write_bytes(b"PK\x03\x04 cut"),
                                      train()), "trainer.pt: the interrupted run's state is damaged", "train-interrupted"),
    # -- broken artifacts: never trusted because thinkrl wrote them; refused before any work or output
    Case("artifact-rollouts-duplicate-ids", judge(rollouts="rollouts-dup-ids"),
         "rollouts/part-00000.parquet: 8 rows share a key (rollout_id)", "judge-interrupted"),
    Case("artifact-rollouts-changed-after-manifest", judge(rollouts="rollouts-changed"),
         "rollouts/part-00000.parquet: changed after its manifest was written", "judge-interrupted"),
    Case("artifact-rollouts-unfinished", judge(rollouts="rollouts-no-manifest"),
         "no _manifest.json; the stage that writes it never finished"),
    Case("artifact-rollouts-bad-finish-reason", judge(rollouts="rollouts-bad-finish"),
         "column 'finish_reason' holds 'abort'"),
    Case("artifact-rollouts-nan-logprobs", segment(rollouts="rollouts-nan-logprobs", scheme="outcome"),
         "column 'logprobs' has non-finite values (NaN or inf)"),
    Case("artifact-rollouts-logprobs-length", segment(rollouts="rollouts-logprobs-length"),
         "break the rule 'completion_ids, logprobs have the same length'"),
    Case("artifact-rollouts-changed-segment", segment(rollouts="rollouts-changed"),
         "changed after its manifest was written"),
    Case("artifact-judgments-bad-label", segment(judgments="judgments-bad-label"),
         "column 'label' holds 'wrongish'"),
    Case("artifact-judgments-duplicate-steps", segment(judgments="judgments-dup"),
         "2 rows share a key (rollout_id, step_idx)"),
    Case("artifact-judgments-of-another-kind", lambda i, t: ["segment", "--rollouts", i.rollouts, "--judgments",
                                                             i.rollouts, "--out", t / "out"],
         "has no 'judgments' table"),
    Case("artifact-advantages-nan", train(thoughts="thoughts-nan"),
         "column 'advantages' has non-finite values (NaN or inf) in 8 rows", "train-interrupted"),
    Case("artifact-advantages-inf", train(thoughts="thoughts-inf"), "column 'advantages' has non-finite values",
         "train-interrupted"),
    Case("artifact-advantages-length", train(thoughts="thoughts-length"),
         "break the rule 'completion_ids, advantages, behaviour_logprobs have the same length'"),
    Case("artifact-advantages-temperature-zero", train(thoughts="thoughts-temperature-zero"),
         "break the rule 'temperature > 0'", "train-interrupted"),
    Case("artifact-advantages-duplicate-ids", train(thoughts="thoughts-dup-ids"), "share a key (rollout_id)"),
    Case("artifact-advantages-of-another-kind", lambda i, t: ["train", "--policy", i.policy, "--thoughts",
                                                              i.rollouts, "--out", t / "out", *TRAIN],
         "has no 'advantages' table", "train-interrupted"),
    Case("artifact-problems-duplicate-ids", sample(problems="problems-dup-ids"), "share a key (problem_id)",
         "sample-interrupted"),
    Case("artifact-problems-corrupt-parquet", sample(problems="problems-corrupt"), "not a readable Parquet file",
         "sample-interrupted"),
    Case("artifact-problems-missing-column", lambda i, t: ["eval", "--policy", i.policy, "--out", t / "out",
                                                           *EVAL[:-2], "--bench", i.art("problems-missing-column")],
         "missing column 'answer'", "eval-interrupted"),
    Case("artifact-judge-eval-rollouts-duplicate-ids", judge_eval(rollouts="rollouts-dup-ids"),
         "share a key (rollout_id)"),
    Case("artifact-inspect-changed", lambda i, t: ["inspect", i.art("rollouts-changed")],
         "changed after its manifest was written"),
]


# --------------------------------------------------------------------------------------------- the checks
def snapshot(root: Path) -> tuple[dict[str, str], set[str]]:
    """(relative path -> sha256 of every file, the set of directories) under root."""
    files, dirs = {}, set()
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            dirs.add(rel)
        else:
            files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files, dirs


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case: Case, inputs: Inputs, tmp_path: Path):
    if case.existing:
        shutil.copytree(inputs.outputs[case.existing], tmp_path / EXISTING_AT.get(case.existing, "out"))
    argv = [str(a) for a in case.argv(inputs, tmp_path)]
    before = snapshot(tmp_path)
    r = CliRunner().invoke(app, argv, env=ENV)
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output, r.output  # no traceback
    errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and case.fragment in errors[0], r.output
    assert snapshot(tmp_path) == before, "the output directory changed"


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_the_interrupted_outputs_hold_finished_work_and_no_manifest(inputs: Inputs):
    """What the `existing` cases protect is there: finished parts (or trainer state), no manifest."""
    parts = {"sample-interrupted": "rollouts", "eval-interrupted": "eval_samples", "judge-interrupted": "judgments"}
    for name, table in parts.items():
        d = inputs.outputs[name]
        assert len(list((d / "_parts" / table).glob("*.parquet"))) >= 1 and not (d / "_manifest.json").exists(), name
    train = inputs.outputs["train-interrupted"]
    assert (train / "state").is_dir() and (train / "policy").is_dir() and not (train / "_manifest.json").exists()
    run = inputs.outputs["run-interrupted"]
    assert list((run / "round-000/rollouts/_parts/rollouts").glob("*.parquet"))
