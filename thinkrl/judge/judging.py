"""The judge stage's work: rollouts -> steps -> one judge call per rollout -> judgments rows, in parts.

    metrics = judge_rollouts(rollouts, judge, tokenizer, writer, splitter="blank")

Steps come from `thinkrl.steps.split_steps` (exact char spans), token spans from the policy tokenizer's
incremental offsets over `completion_ids`. With splitter `judge` a generative judge is shown the lines and
proposes the steps (`Verdict.extra["step_starts"]`); the rows are then its steps, each spanning its lines. Parts of `part_size` rollouts make a killed run resume where it
stopped (a caching backend such as `openai:` also never asks twice).

A failed request (transport error, HTTP error, timeout, or a reply the parser cannot turn into a full verdict
after the client's parse retries) is not a judgment: its part is not written and the artifact is not finished
(IncompleteError, exit 3, with the failures per cause), so a rerun asks again exactly for what failed and
reuses every finished part and cached reply. `allow_failed` finishes anyway: the failed rollouts' steps are
`unknown` with the cause in the `error` column, and the manifest counts them (`failed_rollouts`); such an
artifact is up to date only for runs that allow failures.

Sharding (`--shard k/n`, thinkrl.shards): shard k judges the parts i % n == k of the whole rollouts table (parts of
`part_size` rollouts, as one process cuts them) into the same --out; a shard with failed requests exits 3 and
writes no marker, so the merge waits for its rerun. The last shard merges: every metric from the merged
judgments and the rollouts, the run figures (seconds, judge tokens, failures and reasons of this run) summed over
the shards' last runs, and the --max-unknown check on the whole. part_size is in the parts' key, not the
artifact's: parts of another part size are other parts.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from thinkrl.artifacts import ArtifactWriter, StageResult, finished, input_path, read_table
from thinkrl.errors import IncompleteError, ThinkrlError
from thinkrl.judge.extra_body import EXAMPLE, extra_body_of, extra_body_problem, hf_problem
from thinkrl.judge.prompts import TEMPLATES
from thinkrl.judge.protocol import UNKNOWN, Judge, JudgeRequest, Verdict
from thinkrl.lineage import policy_of
from thinkrl.sampling import SampleConfig
from thinkrl.settings import check_settings, same_as, setting
from thinkrl.shards import Plan, ShardSettings, begin, complete, cuts, part_names, sum_runs
from thinkrl.steps import (
    JUDGE_SPLITTER,
    check_splitter,
    group_lines,
    merge_steps,
    split_steps,
    token_char_offsets,
    token_spans,
)
from thinkrl.thoughts import no_answer


@dataclass(frozen=True)
class JudgeConfig:
    """Every setting of the judge stage (`thinkrl judge`). Only judge, splitter and (for generative judges)
    judge_model, prompt, max_tokens, temperature and extra_body are in its skip key (`judge_config`); the rest
    say how to reach the judge and how often to save."""

    judge: str = setting("rule", "judge: rule | oracle | noisy:P[:SEED] (the oracle with a share P of its step "
                                 "labels flipped) | hf:DIR | openai:URL")
    splitter: str = setting("blank", "step splitter: blank (blank lines), line, or judge (a generative judge "
                                     "groups the lines into steps)")
    judge_model: str | None = setting(None, "openai judge: the model name the server serves")
    prompt: str = setting("intrinsic-v1", f"generative judge prompt template: {', '.join(TEMPLATES)}")
    max_tokens: int = setting(1024, "generative judges: maximum reply tokens", ge=1)
    temperature: float = setting(0.0, "generative judges: sampling temperature of the replies (0: greedy; a "
                                      "thinking Qwen3 judge wants 0.6, docs/SCALE.md); a reply is cached, so a rerun "
                                      "reuses its sample", ge=0)
    extra_body: str | None = setting(None, f"generative judges: a JSON object merged into every request body, e.g. "
                                           f"'{EXAMPLE}' (vLLM: Qwen3 without thinking), or top_p, top_k; a local "
                                           "hf: judge takes only chat_template_kwargs. In an experiment file also a "
                                           "TOML table", check=extra_body_problem, table=True)
    device: str = same_as(SampleConfig, "device")
    concurrency: int = setting(8, "openai judge: requests in flight at once", ge=1)
    timeout_s: float = setting(120.0, "openai judge: per-request timeout in seconds", flag="--timeout", gt=0)
    retries: int = setting(4, "openai judge: retries on timeouts, 429 and 5xx", ge=0)
    parse_retries: int = setting(2, "generative judges: ask again with a format reminder when a reply cannot be "
                                    "read as a full verdict (a label for every step), up to this many times", ge=0)
    allow_failed: bool = setting(False, "finish the judgments although some requests failed for good (their steps "
                                        "`unknown`, counted in the manifest); without it a failed request leaves "
                                        "the artifact unfinished (exit 3) and a rerun retries just those")
    api_key_env: str = setting("OPENAI_API_KEY", "openai judge: environment variable holding the API key (never "
                                                 "written anywhere)")
    cache_dir: str | None = setting(None, "openai judge: reply cache directory (default: OUT/_cache); a rerun "
                                          "never asks twice")
    part_size: int = setting(64, "rollouts per judge part file (resume granularity)", ge=1)
    shard: tuple[int, int] = same_as(ShardSettings, "shard")
    max_unknown: float = setting(0.5, "fail (exit 2) when more than this share of the judged rollouts has no "
                                      "usable verdict (every step unknown: they would train as plain GRPO); the "
                                      "artifact is still written, so a rerun with a higher value reuses it",
                                  ge=0, le=1)

    def __post_init__(self) -> None:
        from thinkrl.judge import judge_kind

        check_settings(self)  # the bounds declared above
        kind = judge_kind(self.judge)
        check_splitter(self.splitter)
        if kind.needs_model_name and not self.judge_model:
            raise ThinkrlError(f"judge {self.judge}: needs judge_model (--judge-model: the model name the server "
                               "serves)")
        if self.splitter == JUDGE_SPLITTER and not kind.generative:
            raise ThinkrlError(f"splitter `judge` needs a generative judge (hf:DIR or openai:URL), not {self.judge!r}")
        if kind.generative and self.prompt not in TEMPLATES:
            raise ThinkrlError(f"unknown judge prompt '{self.prompt}' (known: {', '.join(TEMPLATES)})")
        if kind.local_model and (problem := hf_problem(extra_body_of(self.extra_body))):
            raise ThinkrlError(f"judge {self.judge}: {problem}")


def judge_config(cfg: JudgeConfig, tokenizer: str) -> dict:
    """The judge stage's resolved config (its skip key), the same for `thinkrl judge` and `thinkrl run`.
    Prompt, reply length, model name, temperature and extra_body only matter to generative judges (hf:,
    openai:): for rule and oracle they are left out, so changing them reruns nothing; those carry their code's
    version instead, so an upgraded rule judge relabels. Temperature and extra_body, added after the others,
    enter the key only off their defaults (0, none): there the requests are byte for byte those of the
    versions before them (always temperature 0, no extra keys), so the judgments those finished, the most
    expensive artifacts of a run, stay up to date, as their reply cache entries do (thinkrl.judge.chat)."""
    from thinkrl.judge import judge_kind

    kind = judge_kind(cfg.judge)
    config: dict = {"judge": cfg.judge, "splitter": cfg.splitter, "tokenizer": tokenizer}
    if kind.version is not None:  # their code is the judge: its version is part of the key
        config["judge_version"] = kind.version()
    if kind.generative:
        config |= {"judge_model": cfg.judge_model, "prompt": cfg.prompt,
                   "prompt_version": TEMPLATES[cfg.prompt].version, "max_tokens": cfg.max_tokens}
        if cfg.temperature != 0:
            config["temperature"] = cfg.temperature
        if extra := extra_body_of(cfg.extra_body):
            config["extra_body"] = extra
    if kind.local_model:  # where it runs changes its numerics: the resolved device is part of the key
        from thinkrl.engine import resolve_device

        config["device"] = resolve_device(cfg.device)
    return config


def requests_for(rollouts: pl.DataFrame, splitter: str) -> list[JudgeRequest]:
    reqs = []
    for r in rollouts.iter_rows(named=True):
        steps, _ = split_steps(r["completion"], splitter)
        reqs.append(JudgeRequest(r["rollout_id"], r["question"], r["completion"], tuple(steps),
                                 bool(r["correct"]), r["pred_answer"], r["answer"],
                                 propose_steps=splitter == JUDGE_SPLITTER))
    return reqs


def judge_steps(req: JudgeRequest, v: Verdict) -> tuple[JudgeRequest, Verdict]:
    """Splitter `judge`: the request and verdict over the judge's own steps (its groups of lines; a group
    also ends where the line labels change, which only unknown lines can cause)."""
    if not req.propose_steps:
        return req, v
    labels = v.labels
    starts = set(v.extra.get("step_starts", range(len(req.steps))))
    starts |= {i for i in range(1, len(labels)) if labels[i] != labels[i - 1]}
    groups = group_lines(len(req.steps), sorted(starts))
    steps = merge_steps(req.completion, req.steps, groups)
    merged = Verdict(v.rollout_id, tuple(labels[a] for a, _ in groups), tuple(v.rationales[a] for a, _ in groups),
                     ok=v.ok, reason=v.reason, judge_tokens=v.judge_tokens, extra=v.extra, reply=v.reply)
    return replace(req, steps=tuple(steps)), merged


def verdict_rows(req: JudgeRequest, v: Verdict, completion_ids: list[int], tokenizer, judge: str) -> list[dict]:
    offsets = token_char_offsets(tokenizer, completion_ids)
    spans = token_spans(req.steps, offsets)
    return [{"rollout_id": req.rollout_id, "step_idx": s.idx, "char_start": s.char_start, "char_end": s.char_end,
             "token_start": a, "token_end": b, "text": s.text, "label": lab, "judge": judge, "rationale": why,
             "reply": v.reply, "error": None if v.ok else (v.reason or "failed")}
            for s, (a, b), lab, why in zip(req.steps, spans, v.labels, v.rationales, strict=True)]


def failure_cause(reason: str) -> str:
    """The cause of a failed request, without its attempt count: `http 500 after 5 attempts` -> `http 500`."""
    return reason.split(" after ")[0].strip() or "failed"


def judge_rollouts(rollouts: pl.DataFrame, judge: Judge, tokenizer,
                   writer: ArtifactWriter, splitter: str = "blank", part_size: int = 64,
                   progress: Callable[[int], None] | None = None, allow_failed: bool = False) -> dict:
    """Judge every rollout (parts resume) and finish the judgments (one process); their metrics."""
    return judge_shard(rollouts, judge, tokenizer, writer, splitter, part_size, progress, allow_failed).metrics


def judge_shard(rollouts: pl.DataFrame, judge: Judge, tokenizer, writer: ArtifactWriter, splitter: str = "blank",
                part_size: int = 64, progress: Callable[[int], None] | None = None, allow_failed: bool = False,
                shard: tuple[int, int] = (0, 1), max_unknown: float = 1.0) -> StageResult:
    """Judge this shard's parts (all of them for 0/1) not yet finished; the last shard finishes the artifact
    and checks max_unknown (`check_fallbacks`)."""
    check_splitter(splitter)
    if splitter == JUDGE_SPLITTER and not getattr(judge, "proposes_steps", False):
        raise ThinkrlError(f"splitter '{JUDGE_SPLITTER}' needs a judge that proposes steps (hf:DIR or openai:URL); "
                           f"'{judge.name}' labels given steps: use --splitter blank or line")
    t0 = time.perf_counter()
    stats = Counter()
    reasons: Counter = Counter()
    failed_now: Counter = Counter()  # cause -> rollouts whose request failed for good in this run
    plan = Plan(tuple(part_names(rollouts.height, part_size)), shard)
    begin(writer, plan)
    mine = set(plan.mine)
    for part, (start, size) in zip(plan.parts, cuts(rollouts.height, part_size), strict=True):
        if part not in mine:
            continue
        chunk = rollouts.slice(start, size)
        if writer.part_done("judgments", part) and (allow_failed or not writer.read_part("judgments", part)
                                                    ["error"].is_not_null().any()):
            if progress:   # (a part an interrupted --allow-failed run wrote with failures is asked again)
                progress(chunk.height)
            continue
        reqs = requests_for(chunk, splitter)
        verdicts = judge.judge_many(reqs, progress=progress)
        rows, part_ok = [], True
        for req, v, ids in zip(reqs, verdicts, chunk["completion_ids"].to_list(), strict=True):
            if len(v.labels) != len(req.steps):  # a judge bug must not shift labels onto the wrong steps
                v = Verdict.failed(req, f"judge returned {len(v.labels)} labels for {len(req.steps)} steps",
                                   v.judge_tokens, v.reply)
            req, v = judge_steps(req, v)
            rows += verdict_rows(req, v, ids, tokenizer, judge.name)
            stats["judge_tokens"] += v.judge_tokens
            stats["failed"] += not v.ok
            part_ok &= v.ok
            if not v.ok:
                failed_now[failure_cause(v.reason)] += 1
            if v.reason:
                reasons[v.reason] += 1
        if allow_failed or part_ok:
            writer.write_part("judgments", part, rows)
    if failed_now and not allow_failed:
        n = sum(failed_now.values())
        of = rollouts.height if plan.shard[1] == 1 else f"shard {plan.name}'s"
        raise IncompleteError(
            f"{writer.out}: {n} of {of} rollouts got no verdict ({cause_list(failed_now)}); the "
            "judgments are not finished by this run (an artifact an earlier --allow-failed run finished is left as "
            "it was). Rerun the same command to ask again for just those (finished parts and good replies are "
            "kept), or pass --allow-failed to finish with their steps `unknown`")
    run = {"seconds": round(time.perf_counter() - t0, 3), "judge_tokens": stats["judge_tokens"],
           "failed": stats["failed"], "reasons": dict(reasons), "max_unknown": max_unknown}
    return complete(writer, plan, ["judgments"], run, lambda w, runs: finish_judge(w, runs, rollouts))


def finish_judge(writer: ArtifactWriter, runs: list[dict], rollouts: pl.DataFrame | None = None) -> dict:
    """The judgments artifact from its parts: metrics from the whole judgments table and the rollouts (read from
    the writer's input when not given); the run figures summed over the shards' runs. Then the --max-unknown
    check (the strictest of the runs')."""
    if rollouts is None:
        rollouts = read_table(input_path(writer.out, {"inputs": writer.inputs}, "rollouts"), "rollouts")
    t = sum_runs(runs, "seconds", "judge_tokens", "failed")
    reasons: Counter = Counter()
    for r in runs:
        reasons.update(r.get("reasons", {}))
    df = writer.read_parts("judgments")
    failed_ids = df.filter(pl.col("error").is_not_null()).unique("rollout_id")
    failed_causes = Counter(failure_cause(e) for e in failed_ids["error"].to_list())
    n_steps = max(df.height, 1)
    mix = {f"label_{k}": v / n_steps for k, v in Counter(df["label"].to_list()).items()}
    # rollouts whose verdict is used: with steps, and not wrong with no answer (those get r̂ whatever it says)
    used = [r["rollout_id"] for r in rollouts.select("rollout_id", "correct", "pred_answer").iter_rows(named=True)
            if not no_answer(r)]
    judged = (df.filter(pl.col("rollout_id").is_in(used)).group_by("rollout_id")
              .agg((pl.col("label") == UNKNOWN).all().alias("fallback")))
    fallbacks = int(judged["fallback"].sum())
    metrics = {
        "rollouts": rollouts.height, "steps": df.height, **mix,
        "judged_rollouts": judged.height, "fallback_rollouts": fallbacks,
        "fallback_share": fallbacks / judged.height if judged.height else 0.0,
        "unknown_rate": float((df["label"] == UNKNOWN).sum()) / n_steps,
        "judge_tokens_per_rollout": t["judge_tokens"] / max(rollouts.height, 1),
        "failed_rollouts": failed_ids.height, "failed_causes": dict(failed_causes.most_common()),
        "failed_rollouts_this_run": int(t["failed"]), "reasons_this_run": dict(reasons.most_common(10)),
        "seconds": round(t["seconds"], 3),
    }
    if len(runs) > 1:
        metrics["shards"] = len(runs)
    writer.finish(metrics, allow_empty=True)
    check_fallbacks(metrics, min(r.get("max_unknown", 1.0) for r in runs), writer.out)
    return metrics


def failed_report(metrics: dict) -> str:
    """One line on the failed requests an --allow-failed run kept; '' if none."""
    n = metrics.get("failed_rollouts", 0)
    if not n:
        return ""
    return (f"{n} rollouts have no verdict ({cause_list(metrics.get('failed_causes', {}))}); finished anyway "
            "(--allow-failed): their steps are `unknown`. Rerun without --allow-failed (or with --force) to ask "
            "again for just those")


def cause_list(causes: Counter | dict) -> str:
    """`http 500: 3, timeout: 1`, most frequent first."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(causes.items(), key=lambda kv: (-kv[1], kv[0])))


def run_judge_stage(rollouts: Path, out: Path, cfg: JudgeConfig = JudgeConfig(), tokenizer: Path | None = None,
                    force: bool = False, start: Callable[[int], None] | None = None,
                    progress: Callable[[int], None] | None = None) -> StageResult:
    """The judge stage, for `thinkrl judge` and `thinkrl run` alike: key -> skip -> judge -> finish, then the
    fallback check (`check_fallbacks`, also for an artifact that was up to date). The tokenizer of the token
    spans defaults to the rollouts' policy. start(total rollouts) when work begins; progress(k) as it goes."""
    from thinkrl.judge import make_judge
    from thinkrl.models import load_tokenizer

    df = read_table(rollouts, "rollouts")  # checked before anything else happens
    # the key names the tokenizer as the rollouts wrote it (stable wherever the run is); it is loaded from where
    # the rollouts' manifest finds the policy now (a copied run finds its own)
    tok_name = str(tokenizer or df["policy"][0])
    tok_path = tokenizer or policy_of(rollouts, df["policy"][0])
    writer = ArtifactWriter(out, "judge", judge_config(cfg, tok_name), inputs={"rollouts": rollouts},
                            layout={"part_size": cfg.part_size})
    # finished with failed requests (--allow-failed): up to date only while failures are allowed; else ask again
    if writer.up_to_date() and not force and (cfg.allow_failed or not finished(writer).metrics.get("failed_rollouts")):
        result = finished(writer)
    else:
        from thinkrl.engine import resolve_device

        j = make_judge(cfg.judge, model=cfg.judge_model, max_tokens=cfg.max_tokens, template=cfg.prompt,
                       device=resolve_device(cfg.device),
                       cache_dir=str(cfg.cache_dir or out / "_cache"), concurrency=cfg.concurrency,
                       timeout_s=cfg.timeout_s, retries=cfg.retries, api_key_env=cfg.api_key_env,
                       parse_retries=cfg.parse_retries, temperature=cfg.temperature,
                       extra_body=extra_body_of(cfg.extra_body))
        tok = load_tokenizer(tok_path, hint="; pass --tokenizer DIR")
        if start:  # this shard's rollouts
            start(Plan((), cfg.shard).share([size for _, size in cuts(df.height, cfg.part_size)]))
        return judge_shard(df, j, tok, writer, splitter=cfg.splitter, part_size=cfg.part_size, progress=progress,
                           allow_failed=cfg.allow_failed, shard=cfg.shard, max_unknown=cfg.max_unknown)
    check_fallbacks(result.metrics, cfg.max_unknown, out)  # (a finished artifact is checked against this run's)
    return result


def fallback_report(metrics: dict) -> str:
    """One line on the rollouts whose every step is `unknown` (they train as plain GRPO); '' if none. Wrong
    rollouts with no extractable answer are not counted: they get the outcome advantage whatever the judge
    says (thinkrl.thoughts.no_answer)."""
    n, of = metrics.get("fallback_rollouts", 0), metrics.get("judged_rollouts", 0)
    if not n:
        return ""
    reasons = "; ".join(f"{k} ({v})" for k, v in list(metrics.get("reasons_this_run", {}).items())[:3])
    return (f"{n} of {of} judged rollouts ({metrics['fallback_share']:.1%}) have no usable verdict (every step "
            f"unknown): they get the outcome advantage, as plain GRPO" + (f"; reasons: {reasons}" if reasons else ""))


def check_fallbacks(metrics: dict, max_unknown: float, out) -> None:
    """ThinkrlError (exit 2) when more than `max_unknown` of the judged rollouts fell back. The artifact is
    already written: a rerun with a higher threshold reuses it."""
    share = metrics.get("fallback_share", 0.0)
    if share > max_unknown:
        raise ThinkrlError(f"{out}: {fallback_report(metrics)}; that is more than --max-unknown {max_unknown:g} "
                           "(check the judge server, model and prompt; the judgments are written, rerun with "
                           "a higher --max-unknown to use them anyway)")
