"""Experiments: rounds of sample -> judge -> segment -> train, with held-out eval every N rounds.

    cfg = ExperimentConfig.load("data/experiments/arith-grpo-vs-tp.toml", overrides={"lr": 2e-4})
    summary = run_experiment(cfg, Path("runs/NAME"))          # `thinkrl run FILE --name NAME`

Settings: one frozen dataclass, `ExperimentConfig`, each field with its help text. A TOML experiment file
holds flat `key = value` pairs, one per field (no tables; an unknown key is an error naming it); the CLI
takes every field as an option too (`--lr 2e-4`), and options win over the file, which wins over the
defaults. The resolved settings are saved as runs/NAME/config.toml. `python -m thinkrl.experiment` prints
the reference of every key (data/experiments/README.md).

Layout of a run directory: thinkrl/runs.py (every leaf except policy/ and state/ is an artifact).

Round r samples with the policy trained in round r-1 (round 0 with `policy`). Training problems: with
`problems = "arith"` fresh ArithChain problems drawn from (seed, round), skipping any whose question is in
the held-out arith eval set; with a benchmark name, a problems file or a problems artifact directory, the
rounds cycle through its rows, `prompts_per_round` at a time. Seeds: sample j of problem p in round r uses
`derive_seed(seed, r, p, j)` (thinkrl.sampling); the trainer's seed and the arith problem seed of round r
are hashes of (seed, r); eval uses `seed` (the same uniforms at every eval, so curves share their noise).

Skip and resume. Each round runs the stages' own step functions, the ones the stage commands call
(`run_sample_stage`, `run_judge_stage`, `run_segment_stage`, `run_train_stage`, `run_eval_stage`): key (the
resolved config + the sha256 of its inputs, the previous stage's artifact and the policy directory among them)
-> skip when a finished artifact has that key -> work -> finish. The keys of sample, judge, segment and train
therefore equal those of the stage commands given the same options (tested); eval's differ (`part_size` and the
held-out set names are the run's own), so a hand-run `thinkrl eval` recomputes. Changing a setting
therefore reruns exactly the stages whose config or inputs change and everything downstream: `alpha` reruns segment and train of round 0 (not
sample or judge), then every later round, since the round-0 policy changed. A killed stage resumes from
its part files (sample, judge, eval) or the trainer's state/ (train); segment and problems redo their few
seconds of work. A round whose advantages table is empty (every group all right or all wrong) trains
nothing: its train/ artifact records `carried_forward: true` and policy/ is a copy of the input policy.
The judge runs for every scheme: `outcome` ignores its labels (segment gets no judgments, so changing the
judge does not retrain an outcome run), but the judged error share is reported for all schemes alike.

Where this departs from or guesses at the paper: the paper's rounds hold ~50 optimizer steps of prompts;
the demo presets use smaller rounds so the curves have points. Everything else is the stages' own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import polars as pl

from thinkrl import runs
from thinkrl.artifacts import (
    MANIFEST,
    ArtifactWriter,
    read_manifest,
    read_table,
    write_artifact,
    write_text_atomic,
)
from thinkrl.errors import ThinkrlError
from thinkrl.problems import problems_sha256
from thinkrl.report import RunSummary, collect_run
from thinkrl.runs import INITIAL_EVAL, round_dir

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

HELD_OUT_ARITH = 2000


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a `thinkrl run` experiment (flat keys of the TOML file, options of the CLI)."""

    policy: str = _f("", "start policy: a Hugging Face causal-LM directory (required)")
    rounds: int = _f(4, "rounds of sample -> judge -> segment -> train")
    seed: int = _f(0, "base seed: sampling, training order and arith problems derive from (seed, round)")
    # problems and sampling
    problems: str = _f("arith", "training problems: `arith` (fresh ArithChain problems each round), a "
                                "benchmark name, a problems file or a problems artifact directory (cycled)")
    prompts_per_round: int = _f(40, "problems sampled per round (the round's optimizer steps: this / "
                                    "prompts_per_step x epochs)")
    n: int = _f(8, "completions per problem (group size G)")
    temperature: float = _f(1.0, "sampling temperature of the training rollouts")
    top_p: float = _f(1.0, "nucleus sampling mass of the training rollouts")
    max_tokens: int = _f(160, "maximum completion tokens (training rollouts and eval)")
    template: str = _f("auto", "prompt template: auto (the policy's thinkrl.json), chat, chat-plain, raw, raw-plain")
    engine: str = _f("hf", "generation engine: hf (transformers) or vllm")
    dtype: str = _f("auto", "generation dtype: auto, float32 or bfloat16")
    part_size: int = _f(8, "problems per part file of sample and eval (resume granularity; it sets the batch "
                           "make-up, so changing it reruns sampling and eval)")
    # judge and advantages
    judge: str = _f("rule", "judge: rule | oracle | hf:DIR | openai:URL")
    judge_model: str | None = _f(None, "openai judge: the model name the server serves")
    judge_prompt: str = _f("intrinsic-v1", "generative judge prompt template")
    judge_max_tokens: int = _f(1024, "generative judges: maximum reply tokens")
    judge_concurrency: int = _f(8, "openai judge: requests in flight at once")
    judge_part_size: int = _f(64, "rollouts per judge part file (resume granularity)")
    judge_max_unknown: float = _f(0.5, "stop the run when more than this share of a round's judged rollouts has "
                                        "no usable verdict (every step unknown: they would train as plain GRPO)")
    splitter: str = _f("blank", "step splitter: blank (blank lines), line, or judge (a generative judge groups the lines into steps)")
    scheme: str = _f("thought", "reward scheme: outcome (GRPO), thought (TP-GRPO), thought-static, step")
    alpha: float = _f(1.0, "penalty scale of incorrect thoughts (alpha*acc; alpha for thought-static)")
    recompute_logprobs: bool = _f(True, "the trainer recomputes behaviour log-probs with its own model (else the "
                                        "sampler's)")
    # training
    lr: float = _f(1e-4, "peak learning rate (1e-4 gained +9-11 points on the tiny policy; 3e-4 collapsed)")
    prompts_per_step: int = _f(5, "problems per optimizer step (B), each with all its G rollouts")
    epochs: int = _f(1, "passes over each round's rollouts")
    warmup_steps: int = _f(0, "linear lr warm-up steps, once at the start of the experiment (global steps)")
    schedule: str = _f("constant", "lr schedule over the whole experiment (rounds x planned steps per round): "
                                   "constant, cosine, linear")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    micro_batch_tokens: int = _f(4096, "padded tokens per micro-batch")
    eps_low: float = _f(0.2, "ratio clip below: 1 - eps_low")
    eps_high: float = _f(0.2, "ratio clip above: 1 + eps_high (DAPO: 0.28)")
    beta: float = _f(0.0, "k3 KL coefficient to the start policy `policy` (0 = none)")
    aggregation: str = _f("seq-mean-token-mean", "loss aggregation: seq-mean-token-mean (GRPO), token-mean "
                                                 "(DAPO), seq-mean-token-sum-norm (Dr. GRPO), "
                                                 "micro-batch-token-mean (TRL bnpo); TRL's names accepted")
    save_every: int = _f(10, "trainer checkpoint every N optimizer steps (resume granularity)")
    # eval
    eval_every: int = _f(1, "held-out eval after every N-th round and after the last (0 = no eval)")
    eval_initial: bool = _f(True, "also evaluate the start policy (eval-initial/), when eval_every > 0")
    eval_bench: str = _f("arith", "held-out sets, comma-separated: arith, benchmark names, files or problems "
                                  "artifact directories")
    eval_problems: int = _f(200, "problems per held-out set (the first N; arith: N generated)")
    eval_k: int = _f(4, "samples per held-out problem (avg@k)")
    eval_temperature: float = _f(0.6, "eval sampling temperature (paper: 0.6)")
    eval_top_p: float = _f(0.95, "eval nucleus sampling mass (paper: 0.95)")
    data_dir: str | None = _f(None, "benchmark data directory (default $THINKRL_DATA_DIR, else ./data)")
    threads: int = _f(1, "torch CPU threads (1 is fastest for the tiny policy on a shared 2-core machine)")

    def __post_init__(self) -> None:
        from thinkrl.thoughts import SCHEMES

        positive = ("rounds", "prompts_per_round", "n", "max_tokens", "part_size", "judge_part_size",
                    "prompts_per_step", "epochs", "eval_problems", "eval_k", "threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ThinkrlError(f"experiment: `{name}` must be >= 1, got {getattr(self, name)}")
        if self.scheme not in SCHEMES:
            raise ThinkrlError(f"experiment: unknown scheme {self.scheme!r} (known: {', '.join(SCHEMES)})")
        if self.eval_every < 0 or self.seed < 0 or self.save_every < 0:
            raise ThinkrlError("experiment: `eval_every`, `seed` and `save_every` must be >= 0")
        self.train_config(0)  # validates the training settings (lr, eps, aggregation, schedule ...)
        self._check_judge_and_engine()  # before any work, not at the first round that needs them

    def _check_judge_and_engine(self) -> None:
        from thinkrl.judge import JUDGES
        from thinkrl.judge.judging import judge_config
        from thinkrl.steps import JUDGE_SPLITTER

        kind = JUDGES.get(self.judge.partition(":")[0])
        if kind is None:
            raise ThinkrlError(f"experiment: unknown judge {self.judge!r} (rule, oracle, hf:DIR or openai:URL)")
        if kind.needs_model_name and not self.judge_model:
            raise ThinkrlError("experiment: judge openai:URL needs `judge_model` (the model name the server serves)")
        if self.splitter == JUDGE_SPLITTER and not kind.generative:
            raise ThinkrlError(f"experiment: splitter `judge` needs a generative judge (hf:DIR or openai:URL), "
                               f"not {self.judge!r}")
        judge_config(self.judge, self.splitter, "", self.judge_model, self.judge_prompt, self.judge_max_tokens)
        from thinkrl.engine import check_engine
        from thinkrl.models import torch_dtype

        check_engine(self.engine)
        torch_dtype(self.dtype)

    # -- loading and saving
    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
        """Defaults < the TOML file at `path` < `overrides` (None values in overrides are ignored)."""
        values: dict[str, Any] = {}
        if path is not None:
            values.update(read_toml(Path(path)))
        for k, v in (overrides or {}).items():
            if v is not None:
                values[k] = _coerce(k, v, "option")
        return cls(**values)

    def to_toml(self) -> str:
        lines = ["# thinkrl experiment: resolved settings (`thinkrl run FILE --name NAME` reads this format)"]
        for f in fields(self):
            value = getattr(self, f.name)
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"# {f.name} = (unset)" if value is None else f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    # -- the stages' configs
    def train_config(self, round_: int, continue_from: Path | None = None):
        """Round `round_`'s training settings. One policy trains across the rounds: the lr schedule spans the
        planned steps of every round, and `continue_from` (the previous round's trainer state) carries the
        optimizer and the global step on."""
        from thinkrl.trainer import TrainConfig

        steps_per_round = self.epochs * -(-self.prompts_per_round // self.prompts_per_step)
        return TrainConfig(
            schedule_steps=self.rounds * steps_per_round, recompute_logprobs=self.recompute_logprobs,
            continue_from=str(continue_from) if continue_from else None,
            prompts_per_step=self.prompts_per_step, epochs=self.epochs, lr=self.lr,
            warmup_steps=self.warmup_steps, schedule=self.schedule, weight_decay=self.weight_decay,
            grad_clip=self.grad_clip, micro_batch_tokens=self.micro_batch_tokens, eps_low=self.eps_low,
            eps_high=self.eps_high, beta=self.beta, aggregation=self.aggregation,
            ref_policy=self.policy if self.beta > 0 else None,  # KL to the start policy, in every round
            seed=round_seed(self.seed, round_, "train"), save_every=self.save_every)

    def eval_due(self, round_: int) -> bool:
        return self.eval_every > 0 and ((round_ + 1) % self.eval_every == 0 or round_ == self.rounds - 1)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(ExperimentConfig)


def _coerce(key: str, value: Any, where: str) -> Any:
    """A TOML or CLI value checked against the field's type; a one-line error naming the key otherwise."""
    types = _field_types()
    if key not in types:
        known = ", ".join(f.name for f in fields(ExperimentConfig))
        raise ThinkrlError(f"{where}: unknown setting `{key}` (known: {known})")
    want = types[key]
    args = typing.get_args(want)
    base = next((a for a in args if a is not type(None)), want) if args else want
    if value is None and type(None) in args:
        return None
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}[base](value)
    if not ok:
        raise ThinkrlError(f"{where}: `{key}` must be {base.__name__}, got {type(value).__name__} {value!r}")
    return float(value) if base is float else value


def read_toml(path: Path) -> dict[str, Any]:
    """Flat `key = value` settings of an experiment file, type-checked; tables are not allowed."""
    if not path.is_file():
        raise ThinkrlError(f"{path}: no such experiment file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ThinkrlError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ThinkrlError(f"{path}: invalid TOML ({e})") from None
    for k, v in data.items():
        if isinstance(v, dict):
            raise ThinkrlError(f"{path}: table [{k}] is not allowed: settings are flat `key = value` pairs")
    return {k: _coerce(k, v, str(path)) for k, v in data.items()}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)  # JSON string escapes are valid TOML basic strings


def docs_markdown() -> str:
    """The reference of every experiment key (data/experiments/README.md)."""
    d = ExperimentConfig()
    lines = ["# Experiment files", "",
             "Generated from `thinkrl/experiment.py` by `python -m thinkrl.experiment > data/experiments/README.md`.",
             "", "An experiment file is TOML with flat `key = value` pairs (no tables); an unknown key is an "
             "error. `thinkrl run FILE --name NAME` reads it; every key is also an option (`--lr 2e-4`, "
             "`--eval-every 2`), and options override the file, which overrides the defaults below. The "
             "resolved settings are saved in `runs/NAME/config.toml`.", "",
             "Example: [arith-grpo-vs-tp.toml](arith-grpo-vs-tp.toml).", "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    for f in fields(ExperimentConfig):
        t = str(_field_types()[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
        default = getattr(d, f.name)
        shown = "(unset)" if default is None else ("(required)" if default == "" else _toml_value(default))
        lines.append(f"| `{f.name}` | {t.replace('|', 'or')} | `{shown}` | {f.metadata['help'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- seeds
def round_seed(seed: int, round_: int, what: str) -> int:
    """A 31-bit seed for `what` (train, problems) in round `round_`, from the base seed."""
    digest = hashlib.sha256(f"thinkrl.experiment/{what}/{seed}/{round_}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


# --------------------------------------------------------------------------------------------- display
class Display:
    """Receives the run's events; this base ignores them (stages/run.py draws them live with rich)."""

    def begin(self, name: str, cfg: ExperimentConfig) -> None: ...

    def stage(self, round_: int | None, stage: str, total: int | None = None) -> None:
        """A stage starts; total = units of progress (sequences, rollouts or optimizer steps)."""

    def advance(self, units: int = 0, tokens: int = 0) -> None: ...

    def done(self, round_: int | None, stage: str, text: str, skipped: bool = False) -> None:
        """A stage ended (or was skipped: up to date), with a one-line account."""

    def accuracy(self, round_: int | None, samples: int, value: float) -> None:
        """A held-out eval finished: avg@k (mean over the held-out sets) after `samples` training samples."""

    def end(self, summary: RunSummary) -> None: ...


# --------------------------------------------------------------------------------------------- run
@dataclass
class _Ctx:
    cfg: ExperimentConfig
    run_dir: Path
    display: Display
    eval_sets: dict[str, pl.DataFrame] = field(default_factory=dict)
    train_source: pl.DataFrame | None = None
    _engine: tuple[str, Any] | None = None
    _tokenizers: dict[str, Any] = field(default_factory=dict)

    def engine(self, policy: Path):
        """The generation engine of `policy`, kept while consecutive stages use the same policy."""
        from thinkrl.engine import load_engine

        if self._engine is None or self._engine[0] != str(policy):
            self._engine = None
            self._engine = (str(policy), load_engine(self.cfg.engine, policy, dtype=self.cfg.dtype))
        return self._engine[1]

    def tokenizer(self, policy: Path):
        from thinkrl.models import load_tokenizer

        if str(policy) not in self._tokenizers:
            self._tokenizers[str(policy)] = load_tokenizer(policy)
        return self._tokenizers[str(policy)]

    def status(self, round_: int | None, stage: str) -> None:
        body = {"round": round_, "stage": stage, "pid": os.getpid(), "time": time.time()}
        write_text_atomic(json.dumps(body) + "\n", self.run_dir / runs.STATUS)

    def start(self, round_: int | None, stage: str, total: int | None = None) -> None:
        self.status(round_, stage)
        self.display.stage(round_, stage, total)


def policy_after(run_dir: Path, cfg: ExperimentConfig, round_: int) -> Path:
    """The policy that round `round_` + 1 samples with (round -1: the start policy)."""
    return Path(cfg.policy) if round_ < 0 else runs.trained_policy(run_dir, round_)


def previous_train_state(run_dir: Path, round_: int) -> Path | None:
    """The trainer state round `round_` continues from: the previous round's train/state (None in round 0,
    or while no round has trained yet: rounds carried forward with nothing to learn copy it on)."""
    if round_ <= 0:
        return None
    from thinkrl.trainer import find_state

    prev = round_dir(run_dir, round_ - 1) / runs.TRAIN
    state = find_state(prev)
    if state is None and (prev / MANIFEST).is_file() and _metrics(prev).get("steps", 0) > 0:
        raise ThinkrlError(f"{prev}: trained, but its trainer state (state/) is gone, so round {round_} cannot "
                           "continue its optimizer; remove that round's train/ directory to retrain it")
    return state


def _metrics(out: Path) -> dict:
    return read_manifest(out).get("metrics", {})


# -- problems
def _data_dir(cfg: ExperimentConfig) -> Path:
    from thinkrl.problems import resolve_data_dir

    return resolve_data_dir(Path(cfg.data_dir) if cfg.data_dir else None)


def load_problem_set(name: str, cfg: ExperimentConfig, limit: int | None = None) -> pl.DataFrame:
    """A problems artifact directory, the arith task (limit = how many), a benchmark or a file."""
    from thinkrl.problems import named_problems

    if (Path(name) / MANIFEST).is_file():
        df = read_table(name, "problems")
        return df if limit is None else df.head(limit)
    if name == "arith":
        return named_problems("arith", _data_dir(cfg), n=limit or 200)
    return named_problems(name, _data_dir(cfg), limit=limit)


def _eval_name(name: str) -> str:
    """The benchmark column of an eval set: an artifact directory's name, a file's stem, else the name."""
    p = Path(name)
    if (p / MANIFEST).is_file():
        return p.name
    return p.stem if p.suffix else name


def round_problems(cfg: ExperimentConfig, source: pl.DataFrame | None, round_: int) -> pl.DataFrame:
    """The training problems of one round: rows of `source` cycled through, or (source None) fresh arith
    problems drawn from (seed, round) that are not in the held-out arith set."""
    p = cfg.prompts_per_round
    if source is not None:
        if p > source.height:
            raise ThinkrlError(f"prompts_per_round {p} is more than the {source.height} problems of {cfg.problems}")
        start = (round_ * p) % source.height
        return source[[(start + i) % source.height for i in range(p)]]
    from thinkrl.problems import arith_task

    seed = round_seed(cfg.seed, round_, "problems")
    held_out = held_out_arith_questions()
    n = p
    while True:  # a clash with a held-out question is rare: draw a few more
        rows = [r for r in arith_task(n=n, seed=seed) if r["question"] not in held_out][:p]
        if len(rows) == p:
            return pl.DataFrame(rows)
        n *= 2


@functools.lru_cache(maxsize=1)
def held_out_arith_questions() -> frozenset[str]:
    """Questions of the first HELD_OUT_ARITH problems of the held-out arith set (`eval_bench = "arith"`
    takes a prefix of it); training problems never repeat one, whatever the eval settings."""
    from thinkrl.problems import arith_task

    return frozenset(r["question"] for r in arith_task(n=HELD_OUT_ARITH))


def stage_problems(ctx: _Ctx, round_: int, out: Path) -> Path:
    ctx.start(round_, "problems")
    cfg = ctx.cfg
    df = round_problems(cfg, ctx.train_source, round_)
    inputs = {"problems": cfg.problems} if (Path(cfg.problems) / MANIFEST).is_file() else {}
    config = {"source": cfg.problems, "round": round_, "prompts_per_round": cfg.prompts_per_round,
              "seed": cfg.seed, "problems_sha256": problems_sha256(df)}
    writer = ArtifactWriter(out, "prepare", config, inputs=inputs)
    skipped = writer.up_to_date()
    if not skipped:
        write_artifact(out, "prepare", config, {"problems": df}, inputs=inputs, metrics={"rows": df.height})
    ctx.display.done(round_, "problems", f"{df.height} problems", skipped)
    return out


# -- sample
def stage_sample(ctx: _Ctx, round_: int, policy: Path, problems: Path, out: Path) -> Path:
    from thinkrl.sampling import SampleConfig, run_sample_stage

    cfg = ctx.cfg
    scfg = SampleConfig(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                        template=cfg.template, seed=cfg.seed, round=round_, part_size=cfg.part_size)
    r = run_sample_stage(problems, policy, out, scfg, cfg.engine, cfg.dtype, tokenizer=ctx.tokenizer(policy),
                         load=lambda: ctx.engine(policy), start=lambda total: ctx.start(round_, "sample", total),
                         progress=lambda tokens, seqs: ctx.display.advance(seqs, tokens))
    m = r.metrics
    text = f"{m.get('rollouts')} rollouts, accuracy {m.get('accuracy', 0):.3f}"
    if not r.skipped:
        text += f", mean tokens {m['mean_tokens']:.1f}, {m['tokens_per_s'] or 0:.0f} tok/s"
    ctx.display.done(round_, "sample", text, r.skipped)
    return out


# -- judge
def stage_judge(ctx: _Ctx, round_: int, policy: Path, rollouts: Path, out: Path) -> Path:
    from thinkrl.judge.judging import JudgeStage, run_judge_stage

    cfg = ctx.cfg
    from thinkrl.thoughts import SCHEMES

    max_unknown = cfg.judge_max_unknown if SCHEMES[cfg.scheme].uses_judgments else 1.0  # labels ignored
    how = JudgeStage(concurrency=cfg.judge_concurrency, part_size=cfg.judge_part_size, max_unknown=max_unknown)
    r = run_judge_stage(rollouts, out, cfg.judge, cfg.splitter, policy, cfg.judge_model, cfg.judge_prompt,
                        cfg.judge_max_tokens, how, start=lambda total: ctx.start(round_, "judge", total),
                        progress=lambda k: ctx.display.advance(k))
    m = r.metrics
    text = f"{m.get('steps')} steps of {m.get('rollouts')} rollouts"
    if not r.skipped:
        text += (f", unknown {m['unknown_rate']:.3f}, no usable verdict {m['fallback_share']:.1%}, "
                 f"{m['seconds']:.1f} s")
    ctx.display.done(round_, "judge", text, r.skipped)
    return out


# -- segment
def stage_segment(ctx: _Ctx, round_: int, rollouts: Path, judgments: Path, out: Path) -> Path:
    from thinkrl.segment import run_segment_stage

    cfg = ctx.cfg
    r = run_segment_stage(rollouts, judgments, out, cfg.scheme, cfg.alpha, start=lambda: ctx.start(round_, "segment"))
    m = r.metrics
    ctx.display.done(round_, "segment", f"{m.get('kept_rollouts')}/{m.get('rollouts')} rollouts kept, "
                                        f"incorrect-thought tokens {m.get('incorrect_thought_token_share', 0):.3f}",
                     r.skipped)
    return out


# -- train
def stage_train(ctx: _Ctx, round_: int, policy: Path, thoughts: Path, out: Path) -> Path:
    from thinkrl.training import run_train_stage

    cfg = ctx.cfg.train_config(round_, previous_train_state(ctx.run_dir, round_))
    r = run_train_stage(policy, thoughts, out, cfg, carry_forward=True,
                        start=lambda total: ctx.start(round_, "train", total),
                        progress=lambda row, done, total: ctx.display.advance(1, row["tokens"]))
    m = r.metrics
    if m.get("carried_forward"):
        ctx.display.done(round_, "train", f"nothing to learn ({m.get('reason')}); policy carried forward", r.skipped)
        return out
    if not r.skipped:
        ctx._engine = None  # the policy on disk changed: never reuse an engine loaded from a stale path
    speed = "" if r.skipped else f", {m['seconds_per_step']:.2f} s/step"
    ctx.display.done(round_, "train", f"{m.get('steps')} steps, final loss {m.get('final_loss', 0):+.4f}{speed}",
                     r.skipped)
    return out


# -- eval
def stage_eval(ctx: _Ctx, round_: int | None, policy: Path, out: Path) -> Path:
    from thinkrl.evaluate import EvalConfig, run_eval_stage

    cfg = ctx.cfg
    ecfg = EvalConfig(k=cfg.eval_k, temperature=cfg.eval_temperature, top_p=cfg.eval_top_p,
                      max_tokens=cfg.max_tokens, seed=cfg.seed, part_size=cfg.part_size)
    r = run_eval_stage(ctx.eval_sets, policy, out, ecfg, cfg.template, cfg.engine, cfg.dtype, cfg.eval_problems,
                       tokenizer=ctx.tokenizer(policy), load=lambda: ctx.engine(policy),
                       start=lambda total: ctx.start(round_, "eval", total),
                       progress=lambda tokens, seqs: ctx.display.advance(seqs, tokens))
    s = read_table(out, "eval_summary")
    samples = sum(r["rollouts"] for r in _round_sample_metrics(ctx.run_dir, round_))
    scores = ", ".join(f"{r['benchmark']} avg@{cfg.eval_k} {r['avg_at_k']:.3f}" for r in s.to_dicts())
    ctx.display.done(round_, "eval", f"{scores}, mean tokens {s['mean_tokens'].mean():.1f}", r.skipped)
    ctx.display.accuracy(round_, samples, float(s["avg_at_k"].mean()))
    return out


def _round_sample_metrics(run_dir: Path, upto: int | None) -> list[dict]:
    """Sample-stage metrics of rounds 0..upto (none for the initial eval)."""
    if upto is None:
        return []
    return [_metrics(round_dir(run_dir, r) / runs.ROLLOUTS) for r in range(upto + 1)]


# -- the loop
@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One `thinkrl run` per run directory at a time (an flock: a killed run releases it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS: no lock
        yield
        return
    with open(run_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ThinkrlError(f"{run_dir}: another `thinkrl run` is working in this directory") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch
    from transformers.utils import logging as hf_logging

    before, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(n)
    hf_logging.disable_progress_bar()  # transformers' bars would tear the live display
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if bars:
            hf_logging.enable_progress_bar()


def _context(cfg: ExperimentConfig, run_dir: Path, display: Display) -> _Ctx:
    if not cfg.policy:
        raise ThinkrlError("experiment: set `policy` (the start policy directory) in the file or with --policy")
    from thinkrl.models import check_model_dir

    check_model_dir(cfg.policy)
    ctx = _Ctx(cfg, run_dir, display)
    if cfg.eval_every > 0:
        names = [b.strip() for b in cfg.eval_bench.split(",") if b.strip()]
        ctx.eval_sets = {_eval_name(b): load_problem_set(b, cfg, cfg.eval_problems) for b in names}
    if cfg.problems != "arith":
        ctx.train_source = load_problem_set(cfg.problems, cfg)
    return ctx


def run_round(ctx: _Ctx, r: int) -> None:
    rd = round_dir(ctx.run_dir, r)
    policy = policy_after(ctx.run_dir, ctx.cfg, r - 1)
    problems = stage_problems(ctx, r, rd / runs.PROBLEMS)
    rollouts = stage_sample(ctx, r, policy, problems, rd / runs.ROLLOUTS)
    judgments = stage_judge(ctx, r, policy, rollouts, rd / runs.JUDGMENTS)
    thoughts = stage_segment(ctx, r, rollouts, judgments, rd / runs.THOUGHTS)
    stage_train(ctx, r, policy, thoughts, rd / runs.TRAIN)
    if ctx.cfg.eval_due(r) and ctx.eval_sets:
        stage_eval(ctx, r, policy_after(ctx.run_dir, ctx.cfg, r), rd / runs.EVAL)
    else:
        shutil.rmtree(rd / runs.EVAL, ignore_errors=True)  # left by earlier settings: not part of this run


def _drop_stale_evals(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Remove an initial eval that earlier settings made and these do not ask for (round evals that are no
    longer due go in run_round), so the summary's eval points are exactly this experiment's. Rounds past
    `rounds` are kept (a longer rerun reuses them) and left out of the summary (collect_run)."""
    if not (cfg.eval_initial and cfg.eval_every > 0):
        shutil.rmtree(run_dir / INITIAL_EVAL, ignore_errors=True)


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, display: Display | None = None) -> RunSummary:
    """Run (or continue) the experiment in run_dir; returns `thinkrl.report.collect_run(run_dir)` (also in
    summary.json)."""
    run_dir = Path(run_dir)
    display = display or Display()
    with _run_lock(run_dir), _torch_threads(cfg.threads):
        ctx = _context(cfg, run_dir, display)
        write_text_atomic(cfg.to_toml(), run_dir / runs.CONFIG)
        _drop_stale_evals(run_dir, cfg)
        display.begin(run_dir.name, cfg)
        if cfg.eval_initial and ctx.eval_sets:
            stage_eval(ctx, None, Path(cfg.policy), run_dir / INITIAL_EVAL)
        for r in range(cfg.rounds):
            run_round(ctx, r)
        ctx.status(None, "done")
        summary = collect_run(run_dir)
        write_text_atomic(json.dumps(summary.to_dict(), indent=2) + "\n", run_dir / runs.SUMMARY)
    display.end(summary)
    return summary


# --------------------------------------------------------------------------------------------- several runs
class _QueueDisplay(Display):
    """Forwards a worker's display events to the parent process (advance events at most every 0.2 s)."""

    def __init__(self, queue, name: str):
        self.queue, self.name, self.units, self.tokens, self.last = queue, name, 0, 0, 0.0

    def _send(self, method: str, *args) -> None:
        self.queue.put((self.name, method, args))

    def _flush(self) -> None:
        if self.units or self.tokens:
            self._send("advance", self.units, self.tokens)
            self.units = self.tokens = 0
        self.last = time.monotonic()

    def begin(self, name, cfg) -> None:
        self._send("begin", name, cfg)

    def stage(self, round_, stage, total=None) -> None:
        self._flush()
        self._send("stage", round_, stage, total)

    def advance(self, units=0, tokens=0) -> None:
        self.units, self.tokens = self.units + units, self.tokens + tokens
        if time.monotonic() - self.last > 0.2:
            self._flush()

    def done(self, round_, stage, text, skipped=False) -> None:
        self._flush()
        self._send("done", round_, stage, text, skipped)

    def accuracy(self, round_, samples, value) -> None:
        self._send("accuracy", round_, samples, value)

    def end(self, summary) -> None:
        self._send("end", summary)


def _worker(name: str, cfg: ExperimentConfig, run_dir: Path, queue) -> None:
    try:
        queue.put((name, "__result__", (run_experiment(cfg, run_dir, _QueueDisplay(queue, name)),)))
    except ThinkrlError as e:
        queue.put((name, "__error__", (str(e),)))
    except BaseException as e:  # a bug: the parent reports it, the worker's traceback goes to stderr
        queue.put((name, "__error__", (f"{type(e).__name__}: {e}",)))
        raise


def run_experiments(runs: Mapping[str, tuple[ExperimentConfig, Path]], jobs: int = 1,
                    display: Callable[[str], Display] | None = None) -> dict[str, dict]:
    """Run several experiments; `jobs` > 1 runs that many at once in worker processes (each with its own
    `threads`), so two 1-thread runs use both cores of a 2-core machine. Results are the same either way.
    display(name) gives each run's Display (events are forwarded from the workers). Returns name -> summary."""
    display = display or (lambda name: Display())
    if jobs <= 1 or len(runs) <= 1:
        return {name: run_experiment(cfg, d, display(name)) for name, (cfg, d) in runs.items()}
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # no fork after torch has started its threads
    q = ctx.Queue()
    pending, active, results = list(runs.items()), {}, {}
    try:
        while pending or active:
            while pending and len(active) < jobs:
                name, (cfg, d) = pending.pop(0)
                active[name] = ctx.Process(target=_worker, args=(name, cfg, Path(d), q), daemon=False)
                active[name].start()
            for name, proc in list(active.items()):  # a worker that died (killed, out of memory) sent no result
                if proc.exitcode not in (None, 0):
                    raise ThinkrlError(f"run {name}: worker process exited with code {proc.exitcode} "
                                       "(its traceback, if any, is above)")
            try:
                name, method, args = q.get(timeout=0.5)
            except queue_mod.Empty:
                for name, proc in list(active.items()):
                    if proc.exitcode is not None and q.empty():
                        raise ThinkrlError(f"run {name}: worker process exited with code {proc.exitcode}") from None
                continue
            if method == "__result__":
                results[name] = args[0]
                active.pop(name).join()
            elif method == "__error__":
                raise ThinkrlError(f"run {name}: {args[0]}")
            else:
                getattr(display(name), method)(*args)
    finally:
        for proc in active.values():
            proc.terminate()
            proc.join()
    return {name: results[name] for name in runs}


if __name__ == "__main__":
    print(docs_markdown(), end="")
