"""Artifacts: every table thinkrl writes, defined once, and the rules for writing and reading them.

An artifact is a directory holding one directory per table (`<table>/part-00000.parquet`) and
`_manifest.json`. One table per directory, and a manifest whose name Arrow-based readers skip (they ignore
names starting with `_` or `.`), so the obvious reads give exactly one table: `pl.read_parquet("thoughts/
advantages")`, `duckdb.sql("FROM 'thoughts/advantages/*.parquet'")`, `pandas.read_parquet("rollouts")`,
`datasets.load_dataset("parquet", data_files="rollouts/rollouts/*.parquet")`. The manifest is written last, so an
artifact exists exactly when its manifest exists. It records the stage, thinkrl version, git commit, the
resolved config, inputs with sha256 (paths relative to the artifact, so a copied run keeps its links),
outputs with sha256 and row counts, and summary metrics.

Writing (`ArtifactWriter`):
    w = ArtifactWriter(out_dir, stage="sample", config=cfg, inputs={"problems": path})
    if w.up_to_date(): ...                      # same config + inputs as the existing manifest: skip
    for part in parts:
        if not w.part_done("rollouts", part):   # a killed run resumes from its finished parts
            w.write_part("rollouts", part, rows)
    w.finish(metrics={...})                     # parts -> rollouts/part-00000.parquet, then _manifest.json

Part files live in OUT/_parts/<table>/<part>.parquet (concatenated in name order by `finish`), beside the key
they belong to (`_parts/key`: the parts key, the key plus the `layout` of parts when that is not in the key, e.g.
the judge's part size). A part may carry figures its rows do not tell (`write_part(..., stats=)`, read back by
`part_stats`). Parts of another key are stale and removed, except those of a sharded job with a finished shard
(`_parts/_shards/`, thinkrl.shards), which are refused instead: its other shards may still be running.

Reading (`read_table`) never trusts a file because thinkrl wrote it. It checks the manifest, the file's
sha256 against it (a table changed after its manifest is refused), the schema name and version, every column
and its type, that no two rows share the key, that float values are finite, string columns with a fixed
vocabulary hold only its values, and each schema's row rules (`Rule`: list lengths that must agree, spans
that must be ordered). It fails with one line naming the file, the column and what was expected
(`ThinkrlError`). An artifact given as a stage's input is verified the same way (`fingerprint`), so a stage
never reports "up to date" from a manifest whose tables were changed.

`python -m thinkrl.artifacts` prints docs/ARTIFACTS.md (a test fails when the file is stale).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from thinkrl import __version__
from thinkrl.errors import ThinkrlError
from thinkrl.judge.protocol import LABELS as JUDGE_LABELS

MANIFEST = "_manifest.json"
LEGACY_MANIFEST = "manifest.json"  # layout 1: `<table>.parquet` files beside `manifest.json`
PARTS = "_parts"
SHARD_MARKERS = "_shards"  # _parts/_shards/: the markers of finished shards (thinkrl.shards)
TABLE_FILE = "part-00000.parquet"


def table_file(table: str) -> str:
    """Where table `table` lives inside its artifact directory: `<table>/part-00000.parquet`."""
    return f"{table}/{TABLE_FILE}"


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    doc: str
    nullable: bool = False
    finite: bool = True                    # float values (or list elements) must be finite: no NaN, no inf
    values: tuple[str, ...] | None = None  # the only values a string column may hold


@dataclass(frozen=True)
class Rule:
    """A check on every row of a table, as a polars expression that is True on a good row."""
    expr: pl.Expr
    doc: str               # what a good row satisfies, shown in errors and docs/ARTIFACTS.md


def _same_length(*cols: str) -> Rule:
    first, *rest = cols
    expr = pl.lit(True)
    for c in rest:
        expr = expr & (pl.col(first).list.len() == pl.col(c).list.len())
    return Rule(expr, f"{', '.join(cols)} have the same length")


def _ordered(lo: str, hi: str) -> Rule:
    return Rule((pl.col(lo) >= 0) & (pl.col(lo) <= pl.col(hi)), f"0 <= {lo} <= {hi}")


@dataclass(frozen=True)
class Schema:
    name: str
    version: int
    doc: str
    key: tuple[str, ...]  # unique row id; rows join on these, never on row order
    columns: tuple[Column, ...]
    rules: tuple[Rule, ...] = ()

    @property
    def polars_schema(self) -> dict[str, pl.DataType]:
        return {c.name: c.dtype for c in self.columns}

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


S, I32, I64, F32, F64, B = pl.String(), pl.Int32(), pl.Int64(), pl.Float32(), pl.Float64(), pl.Boolean()
FINISH_REASONS = ("stop", "length")
LABELS = JUDGE_LABELS
LI32, LF32 = pl.List(pl.Int32()), pl.List(pl.Float32())

PROBLEMS = Schema(
    "problems", 1, "Problems to sample from or evaluate on, normalised from any source.", ("problem_id",),
    (
        Column("problem_id", S, "unique id, stable across runs (e.g. `math500-0042`, `arith-s0-000017`)"),
        Column("source", S, "benchmark or task name (math500, aime24, gsm8k, arith, file name...)"),
        Column("question", S, "problem text shown to the policy"),
        Column("answer", S, "gold final answer as a string (AIME `025`, AMC `27.0`, LaTeX)"),
        Column("meta", S, "JSON object with source-specific fields (level, subject, url...)"),
    ),
)

ROLLOUTS = Schema(
    "rollouts", 1, "Sampled completions, graded.", ("rollout_id",),
    (
        Column("rollout_id", S, "`{problem_id}/r{round}/s{sample_idx}`"),
        Column("problem_id", S, "joins problems.problem_id"),
        Column("question", S, "problem text (copied from problems, for judges and people)"),
        Column("sample_idx", I32, "index within the group of G samples of this problem"),
        Column("round", I32, "training round the behaviour policy belongs to (0 for plain sampling)"),
        Column("policy", S, "policy directory or name that sampled it"),
        Column("template", S, "name of the prompt template"),
        Column("prompt", S, "prompt text after the template"),
        Column("completion", S, "generated text (decoded completion_ids, stop string excluded)"),
        Column("prompt_ids", LI32, "token ids of the prompt"),
        Column("completion_ids", LI32, "token ids of the completion"),
        Column("logprobs", LF32, "sampler's log-probs of completion_ids (behaviour log-probs)"),
        Column("finish_reason", S, "`stop` (EOS or stop string) or `length` (hit max tokens)",
               values=FINISH_REASONS),
        Column("answer", S, "gold answer (copied from problems)"),
        Column("pred_answer", S, "extracted final answer, null if none", nullable=True),
        Column("correct", B, "pred_answer equals the gold answer (math-verify)"),
        Column("seed", I64, "sampling seed derived from (round, problem, sample)"),
    ),
    rules=(_same_length("completion_ids", "logprobs"), Rule(pl.col("sample_idx") >= 0, "sample_idx >= 0")),
)

JUDGMENTS = Schema(
    "judgments", 3, "One row per reasoning step of each judged rollout, with the judge's label.",
    ("rollout_id", "step_idx"),
    (
        Column("rollout_id", S, "joins rollouts.rollout_id"),
        Column("step_idx", I32, "0-based step index within the rollout"),
        Column("char_start", I32, "completion[char_start:char_end] == text"),
        Column("char_end", I32, "exclusive end character offset"),
        Column("token_start", I32, "first completion token overlapping the step"),
        Column("token_end", I32, "exclusive end token index"),
        Column("text", S, "the step text"),
        Column("label", S, "correct | incorrect | matched | unmatched | unknown", values=LABELS),
        Column("judge", S, "judge backend and model, e.g. `rule`, `hf:/models/q`"),
        Column("rationale", S, "judge's reason or the parse failure reason"),
        Column("reply", S, "the generative judge's raw reply for this rollout (the same on each of its steps; a "
                           "thinking judge's `<think>…</think>` included, the labels are read after it): the "
                           "reply its labels were read from (after --parse-retries, the last one asked for), the "
                           "same text whether asked now or read from the reply cache; for a request that failed, "
                           "its last reply, null when none came (transport, HTTP, timeout). Null for the code "
                           "judges (rule, oracle): they send no request", nullable=True),
        Column("error", S, "why the judge gave this rollout no verdict (connection error, http 500, timeout, "
                           "unusable reply...): its steps are `unknown`. Null for a real verdict; only an artifact "
                           "finished with --allow-failed has any (manifest metrics.failed_rollouts)", nullable=True),
    ),
    rules=(_ordered("char_start", "char_end"), _ordered("token_start", "token_end")),
)

THOUGHTS = Schema(
    "thoughts", 2, "Thoughts: maximal runs of same-label steps, with their advantage.",
    ("rollout_id", "thought_idx"),
    (
        Column("rollout_id", S, "joins rollouts.rollout_id"),
        Column("thought_idx", I32, "0-based thought index within the rollout"),
        Column("token_start", I32, "first completion token of the thought"),
        Column("token_end", I32, "exclusive end token"),
        Column("char_start", I32, "first character of the thought in rollouts.completion: its first step's "
                                  "char_start"),
        Column("char_end", I32, "exclusive end character: the next thought's char_start (the separator after a "
                                "thought is its own, as its tokens are); for the last, its last step's char_end. "
                                "Its tokens are those whose first character lies in [char_start, char_end), as "
                                "for the judgments' steps (scheme `step`: one thought per step, the step's spans)"),
        Column("text", S, "the thought's text: completion[char_start:char_end]"),
        Column("label", S, "label shared by the thought's steps", values=LABELS),
        Column("reward", F32, "advantage given to every token of the thought"),
    ),
    rules=(_ordered("token_start", "token_end"), _ordered("char_start", "char_end"),
           Rule(pl.col("text").str.len_chars() == pl.col("char_end") - pl.col("char_start"),
                "text has char_end - char_start characters")),
)

ADVANTAGES = Schema(
    "advantages", 3, "Per-rollout training rows: token ids, per-token advantages, behaviour log-probs.",
    ("rollout_id",),
    (
        Column("rollout_id", S, "joins rollouts.rollout_id"),
        Column("problem_id", S, "group id"),
        Column("round", I32, "training round of the rollouts"),
        Column("prompt_ids", LI32, "prompt token ids"),
        Column("completion_ids", LI32, "completion token ids"),
        Column("advantages", LF32, "per-token advantage, aligned with completion_ids"),
        Column("behaviour_logprobs", LF32, "the sampler's log-probs of completion_ids at `temperature` (log pi_old "
                                           "only with train --no-recompute-logprobs: the trainer recomputes it by "
                                           "default); "
                                           "null where the engine's are not at T (vLLM at T != 1)", nullable=True),
        Column("temperature", F32, "sampling temperature of the rollouts; log-probs are log_softmax(logits / T) "
                                   "on both sides of the ratio (T = 0, greedy, scores at 1)"),
        Column("max_tokens", I32, "generation budget of the rollouts (Dr. GRPO's constant norm_len)"),
        Column("outcome_advantage", F32, "standardised outcome r_hat"),
        Column("correct", B, "outcome r == 1"),
        Column("finish_reason", S, "the rollout's `stop` or `length` (hit max_tokens; copied from rollouts)",
               values=FINISH_REASONS),
        Column("incorrect_tokens", I32, "completion tokens inside `incorrect` thoughts (0 when the scheme "
                                        "uses no judgments)"),
    ),
    rules=(_same_length("completion_ids", "advantages", "behaviour_logprobs"),
           Rule(pl.col("temperature") > 0, "temperature > 0"), Rule(pl.col("max_tokens") >= 1, "max_tokens >= 1"),
           Rule((pl.col("incorrect_tokens") >= 0)
                & (pl.col("incorrect_tokens") <= pl.col("completion_ids").list.len()),
                "0 <= incorrect_tokens <= completion tokens")),
)

TRAIN_METRICS = Schema(
    "train_metrics", 3, "One row per optimizer step. The step's rollouts are those of its B groups that were "
    "trained (rollouts with all-zero advantages are dropped before batching: `dropped_rollouts`); every figure is "
    "computed from them alone, over all ranks.", ("step",),
    (
        Column("step", I64, "global optimizer step (1-based), counted across the rounds of an experiment"),
        Column("round", I32, "training round of the step's data"),
        Column("loss", F64, "total loss", finite=False),
        Column("kl", F64, "mean k3 KL to the reference (0 when beta = 0)", finite=False),
        Column("clip_frac", F64, "share of tokens whose ratio was clipped", finite=False),
        Column("ratio_mean", F64, "mean ratio pi_theta / pi_old over the step's tokens (exactly 1 at a run's first "
                                  "step when log pi_old is recomputed)", finite=False),
        Column("grad_norm", F64, "gradient norm before clipping", finite=False),
        Column("lr", F64, "learning rate used"),
        Column("tokens", I64, "completion tokens in the step"),
        Column("dropped_rollouts", I64, "rollouts dropped for all-zero advantages"),
        Column("skipped", B, "step skipped for a non-finite loss or gradient"),
        Column("seconds", F64, "wall seconds of the step (timing column)"),
        Column("mfu", F64, "model FLOPs utilisation against the machine's matmul peak"),
        Column("reward_mean", F64, "mean outcome reward r (1 correct, 0 wrong) over the step's rollouts (TRL's "
                                   "`reward`; equal to accuracy while r is 0/1)"),
        Column("reward_std", F64, "population std of r within each of the step's groups, averaged over the groups "
                                  "(TRL's `reward_std`, there with the sample std; 0 when every group is all right "
                                  "or all wrong)"),
        Column("accuracy", F64, "share of the step's rollouts whose final answer is correct"),
        Column("response_len_mean", F64, "mean completion tokens per rollout of the step"),
        Column("response_len_max", I64, "longest completion of the step, in tokens"),
        Column("truncation_rate", F64, "share of the step's rollouts cut off at max_tokens (finish_reason `length`)"),
        Column("adv_mean", F64, "mean per-token advantage over the step's completion tokens (token-weighted, not "
                                "per rollout)", finite=False),
        Column("adv_std", F64, "population std of the per-token advantages over the step's completion tokens",
               finite=False),
        Column("adv_min", F64, "smallest per-token advantage of the step", finite=False),
        Column("adv_max", F64, "largest per-token advantage of the step", finite=False),
        Column("incorrect_thought_share", F64, "share of the step's completion tokens inside `incorrect` thoughts "
                                               "(segment's incorrect_thought_token_share, on this step's rollouts)"),
        Column("entropy", F64, "mean over the step's completion tokens of the entropy (nats) of pi_theta's whole "
                               "next-token distribution softmax(logits / T) (not top-p truncated), from the "
                               "training forward's logits, before the step's update: exact, not the mean -log p "
                               "of the sampled tokens", finite=False),
        Column("tokens_per_s", F64, "prompt + completion tokens through forward and backward (padding excluded, all "
                                    "ranks) per wall second of the step (timing column)"),
    ),
)

BEHAVIOUR = Schema(
    "behaviour", 1, "log pi_old as the trainer recomputed it before its first update (train artifact; empty "
    "with --no-recompute-logprobs). Compare with advantages.behaviour_logprobs, the sampler's, to see the engine "
    "mismatch.", ("rollout_id",),
    (
        Column("rollout_id", S, "joins advantages.rollout_id"),
        Column("logprobs", LF32, "log pi_old of completion_ids at the sampling temperature, by the trainer's model"),
    ),
)

EVAL_SAMPLES = Schema(
    "eval_samples", 2, "Every evaluation sample.", ("benchmark", "problem_id", "sample_idx"),
    (
        Column("benchmark", S, "benchmark name"),
        Column("problem_id", S, "joins problems.problem_id"),
        Column("sample_idx", I32, "0..k-1"),
        Column("prompt", S, "the prompt text the policy saw (the question after the template)"),
        Column("answer", S, "gold answer (copied from problems)"),
        Column("completion", S, "generated text"),
        Column("pred_answer", S, "extracted answer, null if none", nullable=True),
        Column("correct", B, "graded against the gold answer"),
        Column("tokens", I32, "completion tokens"),
        Column("finish_reason", S, "`stop` or `length`", values=FINISH_REASONS),
    ),
    rules=(Rule(pl.col("tokens") >= 0, "tokens >= 0"),),
)

EVAL_SUMMARY = Schema(
    "eval_summary", 1, "Per-benchmark scores.", ("benchmark",),
    (
        Column("benchmark", S, "benchmark name"),
        Column("problems", I64, "problems evaluated"),
        Column("k", I64, "samples per problem"),
        Column("avg_at_k", F64, "mean pass@1 over the k samples"),
        Column("pass_at_k", F64, "unbiased pass@k estimator"),
        Column("maj_at_k", F64, "majority-vote accuracy over k"),
        Column("mean_tokens", F64, "mean completion tokens"),
        Column("truncation_rate", F64, "share of samples that hit the token limit"),
    ),
)

JUDGE_EVAL = Schema(
    "judge_eval", 2, "A judge measured against the ArithChain oracle or ProcessBench's first-error labels.",
    ("suite", "subset"),
    (
        Column("suite", S, "`oracle` (ArithChain rollouts vs exact step truth) or `processbench`"),
        Column("subset", S, "benchmark subset (gsm8k, math, ...) or the rollouts artifact"),
        Column("items", I64, "rollouts or ProcessBench cases judged"),
        Column("precision", F64, "oracle: precision of error labels (incorrect/matched) per step", nullable=True),
        Column("recall", F64, "oracle: recall of error labels per step", nullable=True),
        Column("exact_interval_rate", F64, "oracle: share of rollouts whose error steps match exactly", nullable=True),
        Column("acc_erroneous", F64, "processbench: first error found exactly, on cases with an error", nullable=True),
        Column("acc_correct", F64, "processbench: no error predicted, on cases without one", nullable=True),
        Column("f1", F64, "processbench: harmonic mean of the two accuracies", nullable=True),
        Column("unknown_rate", F64, "share of steps labelled unknown"),
        Column("failed", I64, "judge requests that failed for good (left out of every figure; only with "
                              "--allow-failed)"),
    ),
)

SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (PROBLEMS, ROLLOUTS, JUDGMENTS, THOUGHTS, ADVANTAGES, TRAIN_METRICS, BEHAVIOUR, EVAL_SAMPLES,
              EVAL_SUMMARY, JUDGE_EVAL)
}


@dataclass(frozen=True)
class StageResult:
    """What a stage's step function returns to its callers (the typer command and `thinkrl run`): the output
    artifact, whether it was already up to date (skipped), and its manifest metrics."""
    out: Path
    skipped: bool
    metrics: dict
    pending: str | None = None  # a shard that finished its parts while others have not: whom it waits for


def finished(writer: ArtifactWriter) -> StageResult:
    """The result of a stage whose artifact is up to date: its manifest's metrics, nothing recomputed."""
    return StageResult(writer.out, True, read_manifest(writer.out).get("metrics", {}))


# --------------------------------------------------------------------------------------------- hashing
_SHA_MEMO: dict[tuple, str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, remembered in this process while its inode, size and mtime stay the same (a
    stage hashes its inputs when it keys its work and again when it reads them)."""
    st = os.stat(path)
    memo = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # ctime: no one sets it
    if memo not in _SHA_MEMO:
        if len(_SHA_MEMO) > 10_000:
            _SHA_MEMO.clear()
        _SHA_MEMO[memo] = _sha256_bytes(path)
    return _SHA_MEMO[memo]


def _sha256_bytes(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(path: str | Path) -> str:
    """sha256 identifying an input: an artifact by its manifest (which holds its outputs' hashes), a file
    by its bytes, any other directory (a model) by the sorted relative paths and hashes of its files."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        verify_artifact(p)  # a manifest whose tables were changed identifies nothing
        return sha256_file(p / MANIFEST)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and PARTS not in f.parts)
        return sha256_json([[str(f.relative_to(p)), sha256_file(f)] for f in files])
    raise ThinkrlError(f"{p}: no such file or directory")


def git_commit() -> str | None:
    """Commit of the thinkrl source tree, with `-dirty` when it has uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, timeout=5)  # noqa: E731
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------------------------- reading
def read_manifest(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise ThinkrlError(f"{p}: no such artifact (expected a directory holding {MANIFEST})")
    if not p.is_dir():
        raise ThinkrlError(f"{p}: is a file; an artifact is a directory holding {MANIFEST} and Parquet files")
    m = p / MANIFEST
    if not m.is_file():
        if (p / LEGACY_MANIFEST).is_file():
            raise ThinkrlError(f"{p}: written by an older thinkrl ({LEGACY_MANIFEST} and <table>.parquet files); "
                               f"rerun the stage that wrote it to get today's layout (<table>/{TABLE_FILE}, {MANIFEST})")
        raise ThinkrlError(f"{p}: no {MANIFEST}; the stage that writes it never finished (rerun it)")
    try:
        manifest = json.loads(m.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ThinkrlError(f"{m}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        raise ThinkrlError(f"{m}: expected a JSON object with an 'outputs' mapping")
    for name, o in manifest["outputs"].items():
        if not isinstance(o, dict) or not isinstance(o.get("file"), str) or not _inside(o["file"]):
            raise ThinkrlError(f"{m}: outputs.{name} must be an object with a 'file' path inside the artifact "
                               "directory")
    return manifest


def _inside(rel: str) -> bool:
    """A relative path that stays inside its directory (no absolute path, no `..`)."""
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts


def input_path(art: str | Path, manifest: Mapping[str, Any], name: str) -> Path | None:
    """Where the input `name` of the artifact at `art` is now: its manifest path is relative to the artifact
    (a run copied whole keeps its links); an absolute path, or a name that is no path, is taken as written."""
    inp = (manifest.get("inputs") or {}).get(name)
    if not inp or not isinstance(inp.get("path"), str):
        return None
    p = Path(inp["path"])
    if p.is_absolute() or not inp.get("relative", False):
        return p
    return Path(os.path.normpath(Path(art) / p))


def _input_record(out: Path, value: str | Path) -> dict:
    """The manifest entry of one input: its path relative to the artifact directory when it is a path here
    (`relative: true`), else as given (a name), and its sha256."""
    sha = fingerprint(value)
    p = Path(value)
    if p.exists():
        return {"path": os.path.relpath(p.resolve(), out.resolve()), "relative": True, "sha256": sha}
    return {"path": str(value), "sha256": sha}


def validate_frame(df: pl.DataFrame, schema: Schema, where: str, allow_empty: bool = False) -> pl.DataFrame:
    """Check columns and types against `schema`; return the frame with columns in schema order."""
    for col in schema.columns:
        if col.name not in df.columns:
            raise ThinkrlError(f"{where}: missing column '{col.name}' ({schema.name} v{schema.version} expects {col.dtype})")
        got = df.schema[col.name]
        if got != col.dtype and got != pl.Null:
            raise ThinkrlError(f"{where}: column '{col.name}' is {got}, expected {col.dtype} ({schema.name} v{schema.version})")
        if not col.nullable and df[col.name].null_count():
            raise ThinkrlError(f"{where}: column '{col.name}' has {df[col.name].null_count()} null values, expected none")
    if df.height == 0 and not allow_empty:
        raise ThinkrlError(f"{where}: table '{schema.name}' has no rows")
    extra = [c for c in df.columns if c not in schema.polars_schema]
    return df.select([c.name for c in schema.columns] + extra)


def _example(df: pl.DataFrame, bad: pl.Series, schema: Schema) -> str:
    """`, e.g. rollout_id=abc/r0/s1` for the first bad row."""
    row = df.filter(bad).row(0, named=True)
    return ", e.g. " + ", ".join(f"{k}={row[k]}" for k in schema.key)


def check_values(df: pl.DataFrame, schema: Schema, where: str) -> None:
    """The checks of values that types cannot express: a unique key, finite floats, fixed vocabularies and
    the schema's row rules. One ThinkrlError naming the file, the column and the first offending row."""
    dup = df.select(schema.key).is_duplicated()
    if dup.any():
        raise ThinkrlError(f"{where}: {int(dup.sum())} rows share a key ({', '.join(schema.key)}){_example(df, dup, schema)}"
                           "; a table's key must be unique")
    for col in schema.columns:
        dtype = col.dtype.inner if isinstance(col.dtype, pl.List) else col.dtype
        if col.finite and dtype.is_float():
            values = pl.col(col.name).list.eval(pl.element().is_finite().not_()).list.any() \
                if isinstance(col.dtype, pl.List) else pl.col(col.name).is_finite().not_()
            bad = df.select(values.fill_null(False)).to_series()
            if bad.any():
                raise ThinkrlError(f"{where}: column '{col.name}' has non-finite values (NaN or inf) in "
                                   f"{int(bad.sum())} rows{_example(df, bad, schema)}")
        if col.values is not None:
            bad = df.select(pl.col(col.name).is_in(col.values).not_().fill_null(False)).to_series()
            if bad.any():
                value = df.filter(bad)[col.name][0]
                raise ThinkrlError(f"{where}: column '{col.name}' holds {value!r} in {int(bad.sum())} rows; expected "
                                   f"one of {', '.join(col.values)}{_example(df, bad, schema)}")
    for rule in schema.rules:
        bad = df.select(rule.expr.not_().fill_null(False)).to_series()
        if bad.any():
            raise ThinkrlError(f"{where}: {int(bad.sum())} rows break the rule '{rule.doc}'{_example(df, bad, schema)}")


def read_table(path: str | Path, table: str, allow_empty: bool = False) -> pl.DataFrame:
    """Read table `table` of the artifact at `path`, validated against its schema and checked (`check_values`);
    the file must be the one its manifest hashed."""
    schema = SCHEMAS[table]
    manifest = read_manifest(path)
    out = manifest["outputs"].get(table)
    if out is None:
        have = ", ".join(manifest["outputs"]) or "none"
        raise ThinkrlError(f"{path}: artifact of stage '{manifest.get('stage')}' has no '{table}' table (has: {have})")
    f = Path(path) / out["file"]
    if out.get("schema_version") != schema.version:
        raise ThinkrlError(f"{f}: schema version {out.get('schema_version')}, expected {table} v{schema.version}")
    check_output(Path(path), out)
    try:
        df = pl.read_parquet(f)
    except Exception as e:  # polars raises several error types for damaged files
        raise ThinkrlError(f"{f}: not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    df = validate_frame(df, schema, str(f), allow_empty=allow_empty)
    check_values(df, schema, str(f))
    return df


def check_output(path: Path, out: Mapping[str, Any]) -> None:
    """The table file `out` of the manifest at `path` is there and is the file the manifest hashed."""
    f = path / out["file"]
    if not f.is_file():
        raise ThinkrlError(f"{f}: missing; the manifest lists it (artifact damaged, rerun the stage)")
    if out.get("bytes") not in (None, f.stat().st_size) or out.get("sha256") != sha256_file(f):  # size: no hashing
        raise ThinkrlError(f"{f}: changed after its manifest was written (its sha256 is not the manifest's); "
                           "rerun the stage that wrote it")


def verify_artifact(path: str | Path) -> dict:
    """The manifest of the artifact at `path` after checking that every table it lists is the file it hashed."""
    manifest = read_manifest(path)
    for out in manifest["outputs"].values():
        check_output(Path(path), out)
    return manifest


# --------------------------------------------------------------------------------------------- writing
def to_frame(rows: pl.DataFrame | Sequence[Mapping[str, Any]], schema: Schema) -> pl.DataFrame:
    """Rows (dicts or a frame) cast to the schema's types; unknown extra columns are kept as they are, and a
    nullable column that is left out is added, all null."""
    if isinstance(rows, pl.DataFrame):
        df = rows
    else:
        df = pl.DataFrame(list(rows), schema_overrides=schema.polars_schema, infer_schema_length=None)
        if df.width == 0:
            df = pl.DataFrame(schema=schema.polars_schema)
    casts = [pl.col(c.name).cast(c.dtype) for c in schema.columns if c.name in df.columns]
    nulls = [pl.lit(None, dtype=c.dtype).alias(c.name) for c in schema.columns
             if c.nullable and c.name not in df.columns]  # a nullable column left out is all null
    return df.with_columns(casts + nulls)


def _write_parquet_atomic(df: pl.DataFrame, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{unique_suffix()}")
    df.write_parquet(tmp, compression="zstd", statistics=True)
    os.replace(tmp, dest)


def unique_suffix() -> str:
    """A name part no other process picks, on this host or another (pids repeat across containers and nodes)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def remove_dir(path: Path) -> None:
    """Remove a directory at once for every other process: renamed aside (one rename wins), then deleted."""
    gone = path.with_name(f".{path.name}.gone-{unique_suffix()}")
    try:
        os.rename(path, gone)
    except FileNotFoundError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def write_text_atomic(text: str, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{unique_suffix()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dest)


def current_umask() -> int:
    """The process umask (os.umask can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_modes(root: Path) -> None:
    """Give root and everything under it the modes a plain `open`/`mkdir` would have under the umask:
    `tempfile.mkdtemp` makes 0700 directories and safetensors 0600 files, which a checkpoint shared with a
    group or copied to another user must not keep."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def replace_dir(tmp: Path, dest: Path, modes_from_umask: bool = True) -> None:
    """Put the finished directory `tmp` (a sibling of dest) in dest's place: the old dest is renamed aside
    first and removed last, so dest is never half-written. tmp's modes are set from the umask first, unless
    tmp holds hard links to files that are not ours to change (modes_from_umask=False)."""
    if modes_from_umask:
        umask_modes(tmp)
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _read_key(d: Path, name: str = "key") -> str | None:
    """The stripped text of d/name, None when it is not there (or vanishes while read: another process)."""
    try:
        return (d / name).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


@contextlib.contextmanager
def _flocked(path: Path):
    """An exclusive flock on `path` (created if missing) for the block; no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class ArtifactWriter:
    """Writes one artifact directory: parts while working, tables and manifest at `finish`.

    The config is hashed with the input fingerprints; a rerun with the same hash resumes from the
    finished part files, a rerun with another hash discards stale parts. An existing good artifact is
    replaced only by `finish`: its manifest is removed just before the new tables are moved in.
    """

    def __init__(self, out_dir: str | Path, stage: str, config: Mapping[str, Any],
                 inputs: Mapping[str, str | Path] | None = None, layout: Mapping[str, Any] | None = None):
        self.out = Path(out_dir)
        if self.out.exists() and not self.out.is_dir():
            raise ThinkrlError(f"{self.out}: is a file; the output of a stage is a directory (--out)")
        self.stage = stage
        self.config = json.loads(json.dumps(dict(config), default=str))  # resolved, JSON-safe
        self.inputs = {k: _input_record(self.out, v) for k, v in (inputs or {}).items()}
        self._keys(layout)

    def _keys(self, layout: Mapping[str, Any] | None) -> None:
        self.key = sha256_json({"stage": self.stage, "config": self.config,
                                "inputs": {k: v["sha256"] for k, v in self.inputs.items()}})
        # the parts' key: the key, and how the input is cut into parts when that is no part of the key (a part
        # file of another part size is another part)
        self.layout = json.loads(json.dumps(dict(layout or {}), default=str))
        self.parts_key = sha256_json({"key": self.key, "layout": self.layout}) if self.layout else self.key
        self._tables: dict[str, pl.DataFrame] = {}
        self._parts_checked = False

    def record(self) -> dict:
        """What `recorded` needs to make this writer again (a shard's marker holds it, for `thinkrl merge`)."""
        return {"stage": self.stage, "config": self.config, "inputs": self.inputs, "layout": self.layout}

    @classmethod
    def recorded(cls, out_dir: str | Path, record: Mapping[str, Any]) -> ArtifactWriter:
        """The writer of `record()`, its inputs as recorded then (not hashed again)."""
        self = cls.__new__(cls)
        self.out, self.stage = Path(out_dir), record["stage"]
        self.config, self.inputs = dict(record["config"]), dict(record["inputs"])
        self._keys(record.get("layout"))
        return self

    # -- skip / resume
    def up_to_date(self) -> bool:
        """True when a finished artifact with the same stage, config and inputs is already there, its tables
        of today's schema versions (an artifact of an older schema is made again)."""
        try:
            m = read_manifest(self.out)
        except ThinkrlError:
            return False
        if m.get("key") != self.key:
            return False
        current = all(o.get("schema") in SCHEMAS and o.get("schema_version") == SCHEMAS[o["schema"]].version
                      for o in m["outputs"].values())
        if not current:
            return False
        try:
            for o in m["outputs"].values():
                check_output(self.out, o)
        except ThinkrlError:
            return False
        return True

    def _open_parts(self) -> None:
        """Make OUT/_parts ours: keep it when it holds parts of our parts key, discard parts of another key,
        unless they are a sharded job's (a shard has finished there): those are refused, not removed. The
        directory is made with its key file and renamed into place, so a shard starting beside another never
        sees one without a key; stale parts are removed under an flock on OUT/.parts.lock, their key read again
        there, so a shard never removes the fresh directory another has just made."""
        root = self.out / PARTS
        for _ in range(5):
            if root.is_dir():
                have = _read_key(root)
                if have == self.parts_key:
                    return
                with _flocked(self.out / ".parts.lock"):
                    have = _read_key(root)
                    if have == self.parts_key:
                        return
                    done = sorted(f.name for f in (root / SHARD_MARKERS).glob("shard-*.json"))
                    if have is not None and done:
                        raise ThinkrlError(f"{root}: holds the parts of a sharded run of another config or inputs "
                                           f"({len(done)} shard(s) finished: {', '.join(done[:3])}); every shard of "
                                           f"one job needs the same settings and inputs: finish that job (same "
                                           f"settings), or remove {root} to start over, or use another --out")
                    remove_dir(root)  # parts of another config or inputs: stale
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = self.out / f".{PARTS}.new-{unique_suffix()}"
            tmp.mkdir()
            write_text_atomic(self.parts_key + "\n", tmp / "key")
            try:
                os.rename(tmp, root)  # fails when another process made it first: look again
                return
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        raise ThinkrlError(f"{root}: could not be made (other processes keep replacing it)")

    def open_parts(self, tables: Sequence[str]) -> None:
        """Make OUT/_parts ours and a parts directory for each table, written or not (a shard that owns no part of
        a small input still joins its job)."""
        for table in tables:
            self._parts_dir(table)

    def _parts_dir(self, table: str) -> Path:
        """OUT/_parts/<table>, holding parts of the table's current schema version. It is made with its version
        mark and renamed into place (a shard starting beside another never sees it unmarked); one of an older
        version is removed in one rename."""
        if not self._parts_checked:
            self._open_parts()
            self._parts_checked = True
        d = self.out / PARTS / table
        version, mark = str(SCHEMAS[table].version), d / "_schema_version"
        for _ in range(5):
            if d.is_dir():
                if _read_key(d, mark.name) == version:
                    return d
                remove_dir(d)  # parts of an older schema version (or of a writer before marks): stale
            tmp = d.with_name(f".{table}.new-{unique_suffix()}")
            tmp.mkdir(parents=True)
            write_text_atomic(version + "\n", tmp / mark.name)
            try:
                os.rename(tmp, d)
                return d
            except OSError:  # another process made it first: look again
                shutil.rmtree(tmp, ignore_errors=True)
        raise ThinkrlError(f"{d}: could not be made (other processes keep replacing it)")

    def part_done(self, table: str, part: str) -> bool:
        return (self._parts_dir(table) / f"{part}.parquet").is_file()

    def write_part(self, table: str, part: str, rows: pl.DataFrame | Sequence[Mapping[str, Any]],
                   stats: Mapping[str, Any] | None = None) -> None:
        """Write one part of a table (tmp + rename). Parts are concatenated in name order by `finish`. `stats`:
        figures of the part that its rows do not tell (read back by `part_stats`), written before the rows."""
        df = validate_frame(to_frame(rows, SCHEMAS[table]), SCHEMAS[table], f"{self.out}:{table}/{part}", allow_empty=True)
        d = self._parts_dir(table)
        if stats is not None:
            write_text_atomic(json.dumps(dict(stats), sort_keys=True) + "\n", d / f"{part}.stats.json")
        _write_parquet_atomic(df, d / f"{part}.parquet")

    def part_stats(self, table: str) -> list[dict]:
        """The `stats` of every finished part of a table, in part order."""
        d = self._parts_dir(table)
        out = []
        for f in sorted(d.glob("*.parquet")):
            s = f.with_name(f.name[:-len(".parquet")] + ".stats.json")
            if not s.is_file():
                raise ThinkrlError(f"{s}: missing (the part {f.name} has no figures); remove the part and rerun")
            out.append(json.loads(s.read_text(encoding="utf-8")))
        return out

    def read_part(self, table: str, part: str) -> pl.DataFrame:
        """One finished part of a table."""
        return pl.read_parquet(self._parts_dir(table) / f"{part}.parquet")

    def read_parts(self, table: str) -> pl.DataFrame:
        files = sorted(self._parts_dir(table).glob("*.parquet"))
        if not files:
            return pl.DataFrame(schema=SCHEMAS[table].polars_schema)
        return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")

    def set_table(self, table: str, rows: pl.DataFrame | Sequence[Mapping[str, Any]]) -> None:
        """Give a whole table at once (instead of parts)."""
        self._tables[table] = to_frame(rows, SCHEMAS[table])

    # -- finish
    def finish(self, metrics: Mapping[str, Any] | None = None, tables: Sequence[str] | None = None,
               allow_empty: bool = False) -> dict:
        """Assemble tables (from `set_table` or parts), write them, then the manifest. Returns the manifest."""
        self.out.mkdir(parents=True, exist_ok=True)
        names = list(tables) if tables is not None else []
        names += [t for t in self._tables if t not in names]
        parts_root = self.out / PARTS
        if parts_root.is_dir():
            names += [d.name for d in sorted(parts_root.iterdir())
                      if d.is_dir() and d.name in SCHEMAS and d.name not in names]  # not _shards/
        if not names:
            raise ValueError("finish() called with no tables")
        staged: dict[str, tuple[Path, pl.DataFrame]] = {}
        for name in names:
            schema = SCHEMAS[name]
            df = self._tables[name] if name in self._tables else self.read_parts(name)
            df = validate_frame(to_frame(df, schema), schema, f"{self.out}:{name}", allow_empty=allow_empty)
            try:   # never finish what a reader would refuse
                check_values(df, schema, f"{self.out}:{name}")
            except ThinkrlError as e:
                raise ThinkrlError(f"stage {self.stage} produced a table its readers would refuse: {e}") from None
            (self.out / name).mkdir(exist_ok=True)
            tmp = self.out / name / f".{TABLE_FILE}.new-{unique_suffix()}"
            df.write_parquet(tmp, compression="zstd", statistics=True)
            staged[name] = (tmp, df)
        outputs = {}
        for name, (tmp, df) in staged.items():
            outputs[name] = {"file": table_file(name), "schema": name, "schema_version": SCHEMAS[name].version,
                             "rows": df.height, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
        manifest = {
            "stage": self.stage, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "thinkrl_version": __version__, "git_commit": git_commit(), "key": self.key,
            "config": self.config, "inputs": self.inputs, "outputs": outputs,
            "metrics": json.loads(json.dumps(dict(metrics or {}), default=float)),
        }
        (self.out / MANIFEST).unlink(missing_ok=True)  # from here until the new manifest, no artifact
        (self.out / LEGACY_MANIFEST).unlink(missing_ok=True)
        for name, (tmp, _) in staged.items():
            for stale in (self.out / name).glob("*.parquet"):  # a table directory holds its table only
                stale.unlink()
            (self.out / f"{name}.parquet").unlink(missing_ok=True)  # the layout-1 file of this table
            os.replace(tmp, self.out / table_file(name))
        write_text_atomic(json.dumps(manifest, indent=2, sort_keys=False) + "\n", self.out / MANIFEST)
        remove_dir(parts_root)  # at once: a shard that comes to merge after this finds no parts, but the manifest
        return manifest


def write_artifact(out_dir: str | Path, stage: str, config: Mapping[str, Any], tables: Mapping[str, Any],
                   inputs: Mapping[str, str | Path] | None = None, metrics: Mapping[str, Any] | None = None) -> dict:
    """One-shot write of whole tables; returns the manifest."""
    w = ArtifactWriter(out_dir, stage, config, inputs)
    for name, rows in tables.items():
        w.set_table(name, rows)
    return w.finish(metrics)


# --------------------------------------------------------------------------------------------- docs
def _column_doc(c: Column) -> str:
    extra = [f"one of {', '.join(f'`{v}`' for v in c.values)}"] if c.values else []
    dtype = c.dtype.inner if isinstance(c.dtype, pl.List) else c.dtype
    if dtype.is_float():
        extra.append("finite" if c.finite else "may be NaN")
    return c.doc + (f" ({'; '.join(extra)})" if extra else "")


# the stage and the artifact directory each table is written to (`thinkrl run` names them so in a round)
_WHERE = {"problems": ("data prepare", "problems"), "rollouts": ("sample", "rollouts"),
          "judgments": ("judge", "judgments"), "thoughts": ("segment", "thoughts"),
          "advantages": ("segment", "thoughts"), "train_metrics": ("train", "train"),
          "behaviour": ("train", "train"), "eval_samples": ("eval", "eval"), "eval_summary": ("eval", "eval"),
          "judge_eval": ("judge-eval", "judge-eval")}


def read_snippets(art: str, table: str) -> list[str]:
    """How to read table `table` of the artifact directory `art` with polars, duckdb, pandas and `datasets`
    (docs/ARTIFACTS.md prints them; a test runs each one)."""
    d = f"{art}/{table}"
    return [f'polars.read_parquet("{d}")',
            f"duckdb.sql(\"SELECT * FROM '{d}/*.parquet'\")",
            f'pandas.read_parquet("{d}")',
            f'datasets.load_dataset("parquet", data_files="{d}/*.parquet", split="train")']


def docs_markdown() -> str:
    lines = ["# Artifacts", "",
             "Generated from `thinkrl/artifacts.py` by `python -m thinkrl.artifacts > docs/ARTIFACTS.md`; "
             "a test fails when this file is stale.", "",
             f"An artifact is a directory with one directory per table (`<table>/{TABLE_FILE}`) and `{MANIFEST}`, "
             "written last (stage, created, thinkrl_version, git_commit, key, config, inputs with sha256 and "
             "their paths relative to the artifact, outputs with file/schema/schema_version/rows/bytes/sha256, "
             "metrics). A table's directory holds that table only, and readers built on Arrow skip names that "
             "start with `_` or `.` (the manifest, `_parts/` of an unfinished stage), so a table directory, or "
             "the artifact directory of a one-table artifact, reads as exactly that table in polars, duckdb, "
             "pandas and Hugging Face `datasets` (a test reads every table with all four). The directory of an "
             "artifact with two tables (thoughts, train, eval) holds both: read the table's directory, not the "
             "artifact's.", "",
             "Reading a table checks its sha256 against the manifest, its columns and types, that its key is "
             "unique, that float values are finite (unless marked `may be NaN`), fixed vocabularies, and the "
             "row rules below; a table that fails is refused with one line naming the file.", ""]
    for s in SCHEMAS.values():
        stage, art = _WHERE[s.name]
        lines += [f"## `{s.name}` (schema version {s.version})", "", s.doc, "",
                  f"Key: {', '.join(f'`{k}`' for k in s.key)}. Written by `thinkrl {stage}` to "
                  f"`{art}/{s.name}/{TABLE_FILE}` (as `{art}/` inside a `thinkrl run` round). Read it with:", "",
                  "```python", *read_snippets(art, s.name), "```", "",
                  "| column | type | nullable | meaning |", "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {c.dtype} | {'yes' if c.nullable else 'no'} | {_column_doc(c).replace('|', '/')} |"
                  for c in s.columns]
        lines.append("")
        if s.rules:
            lines += ["Every row: " + "; ".join(r.doc for r in s.rules) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(docs_markdown(), end="")
