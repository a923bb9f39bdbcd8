"""The round loop of `thinkrl run`: rounds of sample -> judge -> segment -> train, held-out eval every N rounds.

    summary = run_experiment(ExperimentConfig.load("EXPERIMENT.toml"), Path("runs/NAME"))   # `thinkrl run`

The settings are thinkrl/experiment.py; the run directory's layout thinkrl/runs.py (every leaf except policy/
and state/ is an artifact); several runs at once, in worker processes, thinkrl/workers.py.

Round r samples with the policy trained in round r-1 (round 0 with `policy`). Training problems: with
`problems = "arith"` fresh ArithChain problems drawn from (seed, round), skipping any whose question is in
the held-out arith eval set; with a benchmark name, a problems file or a problems artifact directory, the
rounds cycle through its rows, `prompts_per_round` at a time. Seeds: sample j of problem p in round r uses
`derive_seed(seed, r, p, j)` (thinkrl.sampling); the trainer's seed and the arith problem seed of round r
are hashes of (seed, r); eval uses `eval_seed`, or `seed` when it is unset (the same uniforms at every eval, so
curves share their noise; one `eval_seed` for every run of a comparison shares it across schemes and seeds too).

Pairing. No seed depends on the scheme (or on alpha, the judge, the trainer's settings): two runs of one seed and
start policy that differ only there draw the same problems in every round and sample problem p's j-th completion
of round r with the same seed. Round 0 samples the one start policy, so its problems, rollouts and the labels of a
judge that is a function of the rollout (rule, oracle, noisy:P) are byte-identical (tested); from round 1 the policies differ by training, so the rollouts do too: same problems and seeds, other
completions. Their evals share `seed` already; `eval_seed` shares the eval noise across seeds as well.

Skip and resume. Each round runs the stages' own step functions, the ones the stage commands call
(`run_sample_stage`, `run_judge_stage`, `run_segment_stage`, `run_train_stage`, `run_eval_stage`), with the
stage settings that `ExperimentConfig` projects: key (the resolved config + the sha256 of its inputs, the
previous stage's artifact and the policy directory among them) -> skip when a finished artifact has that key
-> work -> finish. The keys of sample, judge, segment and train therefore equal those of the stage commands
given the same options (tested); eval's differ (`part_size` and the held-out set names are the run's own), so a
hand-run `thinkrl eval` recomputes. Changing a setting therefore reruns exactly the stages whose config or
inputs change and everything downstream: `alpha` reruns segment and train of round 0 (not sample or judge),
then every later round, since the round-0 policy changed. A killed stage resumes from its part files (sample,
judge, eval) or the trainer's state/ (train); segment and problems redo their few seconds of work. A round
whose advantages table is empty (every group all right or all wrong) trains nothing: its train/ artifact
records `carried_forward: true` and policy/ is a copy of the input policy. The judge runs for every scheme:
`outcome` ignores its labels (segment gets no judgments, so changing the judge does not retrain an outcome
run), but the judged error share is reported for all schemes alike.

Tracking (`report_to`, thinkrl/tracking.py): one tracker per run, writing in the run directory (runs/NAME/tb/ for
TensorBoard). Every invocation sends it the run's whole history in step order: each round's train_metrics rows
(replayed from finished artifacts and resumed trainer states, live while training), and each eval's scores at the
global step where the evaluated round ended (0 for eval-initial; a round that trained nothing adds no second
point at the same step).

Several processes (`torchrun --nproc-per-node N -m stages.cli run FILE`, one or more nodes; docs/SCALE.md): every
rank runs the round loop. Sample, judge, segment and eval run as shard rank/N of one artifact each
(thinkrl.shards: the last shard to finish merges, the tables are those of one process), and the ranks meet at a
barrier after each, so every rank goes on from the merged artifact; train runs on all N ranks at once (DDP or
FSDP, `strategy`). Rank 0 alone holds the run's lock, writes the problems, config.toml, status and summary,
tracks and displays; a round with nothing to train is carried forward by rank 0 alone. All ranks need the run
directory on one filesystem. The run's artifacts do not depend on N, up to float rounding in training.

Where this departs from or guesses at the paper: the paper's rounds hold ~50 optimizer steps of prompts;
the demo presets use smaller rounds so the curves have points. Everything else is the stages' own.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from thinkrl import runs
from thinkrl.artifacts import (
    MANIFEST,
    ArtifactWriter,
    StageResult,
    read_manifest,
    read_table,
    write_artifact,
    write_text_atomic,
)
from thinkrl.errors import ThinkrlError
from thinkrl.experiment import ExperimentConfig, round_seed
from thinkrl.problems import problem_set, problem_sets, problems_sha256
from thinkrl.runs import INITIAL_EVAL, round_dir
from thinkrl.summary import RunSummary, collect_run
from thinkrl.tracking import Tracker

HELD_OUT_ARITH = 2000


@dataclass
class Ranks:
    """Where this process is among the ranks of a `thinkrl run` under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    dist: Any = None   # thinkrl.distributed.Dist when world > 1 (torch imported only then)

    @classmethod
    def join(cls) -> Ranks:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from thinkrl.distributed import init_distributed

        dist = init_distributed()
        return cls(dist.rank, dist.world, dist)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def close(self) -> None:
        if self.dist is not None:
            self.dist.close()


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
    _engine: tuple[str | None, Any] | None = None   # (the policy its weights are from, None: stale; engine)
    _tokenizers: dict[str, Any] = field(default_factory=dict)
    tracker: Tracker | None = None
    ranks: Ranks = field(default_factory=Ranks)
    global_step: int = 0                             # optimizer steps of the rounds run so far
    eval_step: int | None = None                     # the global step of the last eval sent to the tracker

    def engine(self, policy: Path):
        """The run's one generation engine, holding `policy`'s weights: built once, then each new policy's
        weights are loaded into it (`Engine.reload`: vLLM reloads in place instead of starting again)."""
        from dataclasses import replace

        from thinkrl.engine import engine_device, engine_options, load_engine

        if self._engine is None:  # the dtype is the run's (_generation_dtype_fixed); only the device to resolve
            sample = self.cfg.sample_config(0)
            options = engine_options(replace(sample, device=engine_device(sample.engine, sample.device)))
            self._engine = (str(policy), load_engine(self.cfg.engine, policy, **options))
        elif self._engine[0] != str(policy):
            self._engine[1].reload(policy)
            self._engine = (str(policy), self._engine[1])
        return self._engine[1]

    def tokenizer(self, policy: Path):
        from thinkrl.models import load_tokenizer

        if str(policy) not in self._tokenizers:
            self._tokenizers[str(policy)] = load_tokenizer(policy)
        return self._tokenizers[str(policy)]

    def sharded(self, out: Path, result_of: Callable[[tuple[int, int]], StageResult]) -> StageResult:
        """Run a sharded stage into `out` as this rank's shard (`result_of(shard)`), then wait for the other ranks:
        the last shard to finish has merged, and every rank gets the merged artifact's metrics. Markers left in
        `out` by an earlier invocation (another number of ranks, other settings) are forgotten first: the run's
        lock says no one else works there."""
        from thinkrl.shards import forget_markers

        if self.ranks.main:
            forget_markers(out)
        self.ranks.barrier()
        r = result_of(self.ranks.shard)
        if self.ranks.world == 1:
            return r
        self.ranks.barrier()
        return StageResult(r.out, r.skipped, read_manifest(r.out).get("metrics", {}))

    def status(self, round_: int | None, stage: str) -> None:
        if not self.ranks.main:
            return
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
    if not skipped and ctx.ranks.main:
        write_artifact(out, "prepare", config, {"problems": df}, inputs=inputs, metrics={"rows": df.height})
    ctx.ranks.barrier()
    ctx.display.done(round_, "problems", f"{df.height} problems", skipped)
    return out


# -- sample
def stage_sample(ctx: _Ctx, round_: int, policy: Path, problems: Path, out: Path) -> Path:
    from thinkrl.sampling import run_sample_stage

    r = ctx.sharded(out, lambda shard: run_sample_stage(
        problems, policy, out, replace(ctx.cfg.sample_config(round_), shard=shard), tokenizer=ctx.tokenizer(policy),
        load=lambda: ctx.engine(policy), start=lambda total: ctx.start(round_, "sample", total),
        progress=lambda tokens, seqs: ctx.display.advance(seqs, tokens)))
    m = r.metrics
    text = f"{m.get('rollouts')} rollouts, accuracy {m.get('accuracy', 0):.3f}"
    if not r.skipped:
        text += f", mean tokens {m['mean_tokens']:.1f}, {m['tokens_per_s'] or 0:.0f} tok/s"
    ctx.display.done(round_, "sample", text, r.skipped)
    return out


# -- judge
def stage_judge(ctx: _Ctx, round_: int, policy: Path, rollouts: Path, out: Path) -> Path:
    from thinkrl.judge.judging import run_judge_stage

    r = ctx.sharded(out, lambda shard: run_judge_stage(
        rollouts, out, replace(ctx.cfg.judge_config(), shard=shard), policy,
        start=lambda total: ctx.start(round_, "judge", total), progress=lambda k: ctx.display.advance(k)))
    m = r.metrics
    text = f"{m.get('steps')} steps of {m.get('rollouts')} rollouts"
    if not r.skipped:
        text += (f", unknown {m['unknown_rate']:.3f}, no usable verdict {m['fallback_share']:.1%}, "
                 f"{m['seconds']:.1f} s")
    if m.get("failed_rollouts"):
        from thinkrl.judge.judging import cause_list

        text += f", {m['failed_rollouts']} failed requests allowed ({cause_list(m.get('failed_causes', {}))})"
    ctx.display.done(round_, "judge", text, r.skipped)
    return out


# -- segment
def stage_segment(ctx: _Ctx, round_: int, rollouts: Path, judgments: Path, out: Path) -> Path:
    from thinkrl.segment import run_segment_stage

    r = ctx.sharded(out, lambda shard: run_segment_stage(rollouts, judgments, out,
                                                    replace(ctx.cfg.segment_config(), shard=shard),
                                                    start=lambda: ctx.start(round_, "segment")))
    m = r.metrics
    ctx.display.done(round_, "segment", f"{m.get('kept_rollouts')}/{m.get('rollouts')} rollouts kept, "
                                        f"incorrect-thought tokens {m.get('incorrect_thought_token_share', 0):.3f}",
                     r.skipped)
    return out


# -- train
def stage_train(ctx: _Ctx, round_: int, policy: Path, thoughts: Path, out: Path) -> Path:
    from thinkrl.trainer import NothingToTrain
    from thinkrl.training import run_train_stage

    cfg = ctx.cfg.train_config(round_, previous_train_state(ctx.run_dir, round_))
    try:  # every rank trains (DDP/FSDP); only rank 0 carries a round with nothing to learn forward
        r = run_train_stage(policy, thoughts, out, cfg, carry_forward=ctx.ranks.main,
                            start=lambda total: ctx.start(round_, "train", total),
                            progress=lambda row, done, total: ctx.display.advance(1, row["tokens"]),
                            tracker=ctx.tracker)
    except NothingToTrain:
        if ctx.ranks.main:
            raise
        r = None
    if ctx.ranks.world > 1:
        ctx.ranks.barrier()
        r = StageResult(out, r.skipped if r else False, read_manifest(out).get("metrics", {}))
    m = r.metrics
    ctx.global_step = int(m.get("global_step", ctx.global_step))
    if m.get("carried_forward"):
        ctx.display.done(round_, "train", f"nothing to learn ({m.get('reason')}); policy carried forward", r.skipped)
        return out
    if not r.skipped and ctx._engine is not None:
        ctx._engine = (None, ctx._engine[1])  # the policy on disk changed: its weights are reloaded before use
    speed = "" if r.skipped else f", {m['seconds_per_step']:.2f} s/step"
    ctx.display.done(round_, "train", f"{m.get('steps')} steps, final loss {m.get('final_loss', 0):+.4f}{speed}",
                     r.skipped)
    return out


# -- eval
def stage_eval(ctx: _Ctx, round_: int | None, policy: Path, out: Path) -> Path:
    from thinkrl.evaluate import run_eval_stage

    cfg = ctx.cfg
    r = ctx.sharded(out, lambda shard: run_eval_stage(
        ctx.eval_sets, policy, out, replace(cfg.eval_config(), shard=shard), tokenizer=ctx.tokenizer(policy),
        load=lambda: ctx.engine(policy), start=lambda total: ctx.start(round_, "eval", total),
        progress=lambda tokens, seqs: ctx.display.advance(seqs, tokens)))
    s = read_table(out, "eval_summary")
    samples = sum(r["rollouts"] for r in _round_sample_metrics(ctx.run_dir, round_))
    scores = ", ".join(f"{r['benchmark']} avg@{cfg.eval_k} {r['avg_at_k']:.3f}" for r in s.to_dicts())
    ctx.display.done(round_, "eval", f"{scores}, mean tokens {s['mean_tokens'].mean():.1f}", r.skipped)
    ctx.display.accuracy(round_, samples, float(s["avg_at_k"].mean()))
    if ctx.tracker is not None and ctx.eval_step != ctx.global_step:  # same step: the same policy again
        ctx.tracker.eval_scores(s.to_dicts(), ctx.global_step)
        ctx.eval_step = ctx.global_step
    return out


def _round_sample_metrics(run_dir: Path, upto: int | None) -> list[dict]:
    """Sample-stage metrics of rounds 0..upto (none for the initial eval)."""
    if upto is None:
        return []
    return [_metrics(round_dir(run_dir, r) / runs.ROLLOUTS) for r in range(upto + 1)]


# -- the loop
@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One `thinkrl run` per run directory at a time: an flock on run_dir/.lock, which a killed run releases
    too. The file is removed while still locked when the run ends, however it ends; a run that opened it
    meanwhile finds, once it holds the lock, that the path no longer names its file, and takes a new one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS: no lock
        yield
        return
    path = run_dir / ".lock"
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise ThinkrlError(f"{run_dir}: another `thinkrl run` is working in this directory") from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()  # the run that held it removed this file as it ended: lock the new one
    try:
        yield
    finally:
        try:  # only our own file: one that replaced it (after someone deleted ours) belongs to another run
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


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


def _generation_dtype_fixed(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with its generation dtype resolved once, from the start policy: the run's one engine keeps it for
    every round, so every round's key records the dtype that engine really runs (a trained policy saved in fp32
    would otherwise resolve to another `auto` than an fp16 start checkpoint)."""
    from dataclasses import replace

    from thinkrl.engine import engine_device, resolve_dtype

    return replace(cfg, dtype=resolve_dtype(cfg.engine, cfg.dtype, engine_device(cfg.engine, cfg.device), cfg.policy))


def _context(cfg: ExperimentConfig, run_dir: Path, display: Display, ranks: Ranks | None = None) -> _Ctx:
    """The run's context, every input checked (policy and judge directories, problem sets); it writes nothing,
    so a bad input fails before the run directory is touched. Ranks other than 0 neither display nor track."""
    ranks = ranks or Ranks()
    if not cfg.policy:
        raise ThinkrlError("experiment: set `policy` (the start policy directory) in the file or with --policy")
    from thinkrl.models import check_weights_fit, load_tokenizer

    for model in [cfg.policy] + ([cfg.judge[3:]] if cfg.judge.startswith("hf:") else []):
        check_weights_fit(model)  # names and shapes of its tensors, without loading them
        load_tokenizer(model)
    ctx = _Ctx(_generation_dtype_fixed(cfg), run_dir, display if ranks.main else Display(), ranks=ranks)
    ctx.tracker = Tracker(cfg.report_to if ranks.main else "none", run_dir, run_dir.name,
                          asdict(cfg))  # its package checked here
    if cfg.eval_every > 0:
        ctx.eval_sets = problem_sets(cfg.eval_bench, _data_dir(cfg), cfg.eval_problems)
    if cfg.problems != "arith":
        ctx.train_source = problem_set(cfg.problems, _data_dir(cfg))
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
        if ctx.ranks.main:
            shutil.rmtree(rd / runs.EVAL, ignore_errors=True)  # left by earlier settings: not part of this run


def _drop_stale_evals(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Remove an initial eval that earlier settings made and these do not ask for (round evals that are no
    longer due go in run_round), so the summary's eval points are exactly this experiment's. Rounds past
    `rounds` are kept (a longer rerun reuses them) and left out of the summary (collect_run)."""
    if not (cfg.eval_initial and cfg.eval_every > 0):
        shutil.rmtree(run_dir / INITIAL_EVAL, ignore_errors=True)


def run_experiment(cfg: ExperimentConfig, run_dir: str | Path, display: Display | None = None) -> RunSummary:
    """Run (or continue) the experiment in run_dir; returns `thinkrl.summary.collect_run(run_dir)` (also in
    summary.json)."""
    run_dir = Path(run_dir)
    display = display or Display()
    if run_dir.exists() and not run_dir.is_dir():
        raise ThinkrlError(f"{run_dir}: is a file; a run is a directory (give another --name or --runs-dir)")
    if (run_dir / "config.json").is_file() or (run_dir / MANIFEST).is_file():
        raise ThinkrlError(f"{run_dir}: holds a model or an artifact, not a run; give the run another name "
                           "(--name) or another --runs-dir")
    ranks = Ranks.join()
    try:
        ctx = _context(cfg, run_dir, display, ranks)  # every input checked before the run directory is touched
        lock = _run_lock(run_dir) if ranks.main else contextlib.nullcontext()  # one run per directory: rank 0's
        with lock, _torch_threads(cfg.threads), ctx.tracker:
            if ranks.main:
                write_text_atomic(cfg.to_toml(), run_dir / runs.CONFIG)
                _drop_stale_evals(run_dir, cfg)
            ranks.barrier()
            ctx.display.begin(run_dir.name, cfg)
            if cfg.eval_initial and ctx.eval_sets:
                stage_eval(ctx, None, Path(cfg.policy), run_dir / INITIAL_EVAL)
            for r in range(cfg.rounds):
                run_round(ctx, r)
            ctx.status(None, "done")
            summary = collect_run(run_dir)
            if ranks.main:
                write_text_atomic(json.dumps(summary.to_dict(), indent=2) + "\n", run_dir / runs.SUMMARY)
            ranks.barrier()
    finally:
        ranks.close()
    ctx.display.end(summary)
    return summary


