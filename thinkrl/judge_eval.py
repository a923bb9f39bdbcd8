"""Judge evaluation: how well a judge finds the wrong steps.

(a) `oracle_suite`: ArithChain rollouts judged by the judge and by the exact oracle (thinkrl.tasks.arith).
    Per step, an "error label" is `incorrect` (correct rollouts) or `matched` (wrong rollouts). Reported:
    precision and recall of the judge's error labels against the oracle's, and the exact-interval rate
    (share of rollouts whose set of error steps equals the oracle's). Steps the judge left `unknown` count
    as not-error.
(b) `processbench_suite`: ProcessBench cases (problem, steps, first-error `label`, -1 when none;
    `final_answer_correct`). The steps are joined by blank lines into a completion, the protocol follows
    `final_answer_correct`, and the predicted first error is the first `incorrect`/`matched` step (or none).
    Reported: accuracy on erroneous cases (exact index), accuracy on correct cases, and their harmonic mean
    F1, as in the ProcessBench paper. Published reference F1 (average of 4 subsets): GPT-4o 61.9,
    Qwen2.5-Math-PRM-7B 73.5. A reference figure: do not tune a judge to it.

The stage (`thinkrl judge-eval`) is `run_judge_eval_stage`: key -> skip -> both suites -> the judge_eval table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from thinkrl.artifacts import ArtifactWriter, StageResult, read_table
from thinkrl.errors import IncompleteError, ThinkrlError
from thinkrl.grading import extract_answer
from thinkrl.judge.extra_body import extra_body_of
from thinkrl.judge.judging import JudgeConfig, requests_for
from thinkrl.judge.protocol import INCORRECT, MATCHED, UNKNOWN, Judge, JudgeRequest
from thinkrl.settings import check_settings, same_as, setting
from thinkrl.steps import Step
from thinkrl.tasks.arith import oracle_label, problem_from_question

ERROR = (INCORRECT, MATCHED)


def oracle_suite(rollouts: pl.DataFrame, judge: Judge, subset: str = "arith", progress=None) -> dict:
    """Judge ArithChain rollouts and compare with the oracle, step by step. Failed requests are not judgments:
    they are counted (`failed`) and left out of every figure."""
    reqs = requests_for(rollouts, "blank")
    verdicts = judge.judge_many(reqs, progress=progress)
    tp = fp = fn = exact = steps = unknown = items = failed = 0
    for req, v in zip(reqs, verdicts, strict=True):
        if not v.ok:
            failed += 1
            continue
        problem = problem_from_question(req.question)
        if problem is None:
            continue
        truth = oracle_label(problem, req.completion).labels
        if len(truth) != len(v.labels):
            continue  # cannot happen with the same splitter; never compare misaligned steps
        items += 1
        mine = {i for i, lab in enumerate(v.labels) if lab in ERROR}
        real = {i for i, lab in enumerate(truth) if lab in ERROR}
        tp, fp, fn = tp + len(mine & real), fp + len(mine - real), fn + len(real - mine)
        exact += mine == real
        steps += len(v.labels)
        unknown += sum(lab == UNKNOWN for lab in v.labels)
    return {"suite": "oracle", "subset": subset, "items": items,
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "exact_interval_rate": exact / items if items else None,
            "acc_erroneous": None, "acc_correct": None, "f1": None, "unknown_rate": unknown / max(steps, 1),
            "failed": failed}


def processbench_request(row: dict) -> JudgeRequest:
    meta = json.loads(row["meta"]) if isinstance(row.get("meta"), str) else row
    texts = [str(s).strip() for s in meta["steps"]]
    steps, pos = [], 0
    for i, t in enumerate(texts):
        steps.append(Step(i, pos, pos + len(t), t))
        pos += len(t) + 2
    completion = "\n\n".join(texts)
    return JudgeRequest(row["problem_id"], row["question"], completion, tuple(steps),
                        bool(meta["final_answer_correct"]), extract_answer(texts[-1]) if texts else None, "")


def first_error(labels: tuple[str, ...]) -> int:
    return next((i for i, lab in enumerate(labels) if lab in ERROR), -1)


def processbench_suite(cases: pl.DataFrame, judge: Judge, subset: str, progress=None) -> dict:
    """cases: a problems table of a processbench_* set (steps, label, final_answer_correct in meta)."""
    rows = cases.to_dicts()
    reqs = [processbench_request(r) for r in rows]
    verdicts = judge.judge_many(reqs, progress=progress)
    err_hit = err_n = ok_hit = ok_n = steps = unknown = failed = 0
    for r, v in zip(rows, verdicts, strict=True):
        if not v.ok:  # no verdict: "no error found" would score it
            failed += 1
            continue
        label = int(json.loads(r["meta"])["label"])
        pred = first_error(v.labels)
        if label == -1:
            ok_n, ok_hit = ok_n + 1, ok_hit + (pred == -1)
        else:
            err_n, err_hit = err_n + 1, err_hit + (pred == label)
        steps += len(v.labels)
        unknown += sum(lab == UNKNOWN for lab in v.labels)
    acc_e = err_hit / err_n if err_n else None
    acc_c = ok_hit / ok_n if ok_n else None
    f1 = 2 * acc_e * acc_c / (acc_e + acc_c) if acc_e is not None and acc_c is not None and acc_e + acc_c else None
    return {"suite": "processbench", "subset": subset, "items": len(rows) - failed, "precision": None,
            "recall": None, "exact_interval_rate": None, "acc_erroneous": acc_e, "acc_correct": acc_c, "f1": f1,
            "unknown_rate": unknown / max(steps, 1), "failed": failed}


@dataclass(frozen=True)
class JudgeEvalConfig:
    """Every setting of `thinkrl judge-eval` (the judge's own are the judge stage's)."""

    judge: str = same_as(JudgeConfig, "judge")
    judge_model: str | None = same_as(JudgeConfig, "judge_model")
    max_tokens: int = same_as(JudgeConfig, "max_tokens")
    temperature: float = same_as(JudgeConfig, "temperature")
    extra_body: str | None = same_as(JudgeConfig, "extra_body")
    concurrency: int = same_as(JudgeConfig, "concurrency")
    timeout_s: float = same_as(JudgeConfig, "timeout_s")
    retries: int = same_as(JudgeConfig, "retries")
    parse_retries: int = same_as(JudgeConfig, "parse_retries")
    api_key_env: str = same_as(JudgeConfig, "api_key_env")
    allow_failed: bool = same_as(JudgeConfig, "allow_failed")
    processbench: str | None = setting(None, "comma-separated ProcessBench subsets: gsm8k, math, olympiadbench, "
                                             "omnimath")
    limit: int | None = setting(None, "first N cases of each ProcessBench subset", ge=1)

    def __post_init__(self) -> None:
        check_settings(self)

    def subsets(self) -> list[str]:
        return [s.strip() for s in (self.processbench or "").split(",") if s.strip()]


def judge_eval_key(cfg: JudgeEvalConfig) -> dict:
    """The stage's skip key: the judge's own key (its version for rule/oracle, prompt, reply length,
    temperature and extra_body for generative judges: `judging.judge_config`), the subsets and the limit."""
    from thinkrl.judge.judging import judge_config

    judge = judge_config(JudgeConfig(cfg.judge, judge_model=cfg.judge_model, max_tokens=cfg.max_tokens,
                                     temperature=cfg.temperature, extra_body=cfg.extra_body), "")
    return {**judge, "processbench": cfg.subsets(), "limit": cfg.limit}


def run_judge_eval_stage(out: Path, cfg: JudgeEvalConfig, rollouts: Path | None, data_dir: Path,
                         force: bool = False, status=None) -> StageResult:
    """The judge-eval stage: key -> skip -> the oracle suite on `rollouts` and the ProcessBench subsets -> the
    judge_eval table (StageResult.metrics["rows"] holds its rows). status(text) is a context manager shown
    while the judge works."""
    import contextlib

    from thinkrl.judge import make_judge
    from thinkrl.problems import named_problems

    if rollouts is None and not cfg.subsets():
        raise ThinkrlError("give --rollouts (ArithChain, vs the oracle) and/or --processbench SUBSETS")
    writer = ArtifactWriter(out, "judge-eval", judge_eval_key(cfg), inputs={"rollouts": rollouts} if rollouts else {})
    if writer.up_to_date() and not force:
        return StageResult(out, True, {"rows": read_table(out, "judge_eval").to_dicts()})
    cases = {s: named_problems(f"processbench_{s}", data_dir, limit=cfg.limit) for s in cfg.subsets()}  # fail early
    judge = make_judge(cfg.judge, model=cfg.judge_model, max_tokens=cfg.max_tokens, cache_dir=str(out / "_cache"),
                       concurrency=cfg.concurrency, timeout_s=cfg.timeout_s, retries=cfg.retries,
                       parse_retries=cfg.parse_retries, api_key_env=cfg.api_key_env, temperature=cfg.temperature,
                       extra_body=extra_body_of(cfg.extra_body))
    rows = []
    with (status(f"judge-eval with {judge.name}") if status else contextlib.nullcontext()):
        if rollouts is not None:
            rows.append(oracle_suite(read_table(rollouts, "rollouts"), judge, subset=str(rollouts)))
        rows += [processbench_suite(df, judge, s) for s, df in cases.items()]
    failed = sum(r["failed"] for r in rows)
    if failed and not cfg.allow_failed:
        raise IncompleteError(f"{out}: {failed} judge requests got no verdict (server errors, timeouts or unusable "
                              "replies); nothing is written. Rerun to ask again (good replies are cached), or pass "
                              "--allow-failed to score without them")
    writer.set_table("judge_eval", rows)
    writer.finish({f"{r['suite']}/{r['subset']}/{k}": r[k] for r in rows
                   for k in ("precision", "recall", "exact_interval_rate", "f1") if r[k] is not None})
    return StageResult(out, False, {"rows": rows})

