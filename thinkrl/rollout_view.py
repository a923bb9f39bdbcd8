"""The rollout view: why one rollout (or its group of G) was rewarded as it was (`thinkrl inspect --rollout`).

    view = open_view("runs/x/round-000/rollouts", rollout_id="arith-s0-000017/r0/s3")  # finds judgments, thoughts
    view = rollout_view(rollouts_dir, judgments_dir, thoughts_dir, problem_id="arith-s0-000017")  # given paths
    view = rollout_view(rollouts_dir, judgments_dir, thoughts_dir, train_dir=train_dir, rollout_id=rid)  # + log pi_old
    view.focus, view.to_dict()                 # the rollouts asked for; plain data for `--json`

`rollout_view(rollouts, judgments, thoughts, rollout_id, problem_id)` gathers, for the group (problem, round)
of the chosen rollout: the completion, its steps with labels, char and token spans and the judge's
rationale (judgments), thought spans, texts and rewards (thoughts table), per-token advantages and the outcome
advantage (advantages table; a rollout of the group missing from it was dropped: all-zero advantages),
and the tokens: completion ids decoded with the policy's tokenizer (from the rollouts' `policy` column;
`tokenizer.json` through `tokenizers`, else transformers' AutoTokenizer), char offsets from
`steps.token_char_offsets` (the judge's own mapping). `RolloutView.tokens[t]` is the text token t adds to the
decoded completion, next to `advantages[t]` ('' for a special token such as EOS, whose name is in its piece,
and for the first bytes of a character split over byte tokens), so "".join(tokens) is the decoded completion.
When no tokenizer loads, the view is char-level: one piece per step or gap, with the mean advantage of its
token span, and no tokens.

Per token, where they exist: the sampler's log-prob (rollouts.logprobs, the behaviour log-probs the engine
returned), the trainer's log pi_old (the train artifact's `behaviour` table: recomputed by the trainer's own
model before its first update, at the sampling temperature; absent with --no-recompute-logprobs and for
dropped rollouts) and their ratio exp(log pi_old - log p_sampler), the engine mismatch (1 up to numerics when
sampler and trainer agree; not shown where the segment stage recorded the sampler's log-probs as not at the
sampling temperature: vLLM at T != 1). The training ratio pi_theta / pi_old per token is not stored (it is
exactly 1 at the first step; train_metrics has its per-step mean). Char-level pieces carry the sums over
their tokens. The judge's side: each step's rationale (judgments.rationale) and, for generative judges, the
raw reply the labels were read from (judgments.reply, when the table has that column and it is not null).

`open_view(path, ...)` starts from any of the three artifacts and finds the others (`thinkrl/lineage.py`).
The view is drawn on the terminal and as an HTML page by `thinkrl/rollout_render.py`.

Against the paper: tooling for looking at rollouts, not part of the method (docs/PAPER.md). Without a thoughts
table the thoughts are merged here from the judgments (`thoughts.merge_thoughts`, no rewards).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from thinkrl.artifacts import read_manifest, read_table
from thinkrl.errors import ThinkrlError
from thinkrl.lineage import policy_of, related_artifacts
from thinkrl.steps import token_char_offsets
from thinkrl.thoughts import merge_thoughts, outcome_advantages, step_labels


@dataclass
class StepView:
    idx: int
    char_start: int
    char_end: int
    token_start: int
    token_end: int
    label: str
    text: str
    rationale: str


@dataclass
class ThoughtView:
    idx: int
    token_start: int
    token_end: int
    label: str
    reward: float | None          # from the thoughts table; None when derived from the judgments only
    char_start: int               # its char span in the completion (thoughts table, or merged the same way)
    char_end: int
    text: str                     # completion[char_start:char_end]
    steps: list[int]
    adv_min: float | None = None  # per-token advantages over the thought's tokens (advantages table)
    adv_max: float | None = None


@dataclass
class Piece:
    """A run of completion text shown as one unit: one token (token-level) or one step/gap (char-level)."""
    text: str
    char_start: int
    token_start: int
    token_end: int
    advantage: float | None       # the token's advantage, or the mean over the piece's tokens
    step: int | None
    label: str | None             # label of the step holding it
    thought: int | None
    special: bool = False         # a special token (EOS), not part of the completion text
    logprob: float | None = None      # the sampler's log-prob of the token (char-level: sum over the piece)
    old_logprob: float | None = None  # the trainer's log pi_old (train artifact's behaviour table), same


@dataclass
class RolloutView:
    rollout_id: str
    sample_idx: int
    completion: str
    correct: bool
    pred_answer: str | None
    answer: str
    finish_reason: str
    policy: str
    n_tokens: int
    steps: list[StepView]
    thoughts: list[ThoughtView]
    thoughts_source: str          # "thoughts table", "judgments (merged here)" or "none"
    advantages: list[float] | None
    tokens: list[str] | None      # per completion token, the text it adds to the decoded completion (aligned
                                  # with advantages); None in a char-level view
    outcome_advantage: float
    outcome_source: str           # "advantages table" or "computed from the group"
    dropped: bool | None          # None: no thoughts artifact given
    pieces: list[Piece]
    token_level: bool
    answer_char_start: int        # where the answer part (after the last step) begins
    reply: str | None = None      # the generative judge's raw reply (judgments.reply), None for code judges
    logprobs: list[float] | None = None      # the sampler's, per completion token (rollouts.logprobs)
    old_logprobs: list[float] | None = None  # the trainer's log pi_old (train behaviour table), None if absent
    ratio_valid: bool = True      # False: the sampler's log-probs are not at the sampling temperature

    def ratio(self, p: Piece) -> float | None:
        """exp(log pi_old - log p_sampler) of a piece (the trainer/sampler mismatch), None when unknown."""
        if not self.ratio_valid or p.logprob is None or p.old_logprob is None:
            return None
        return float(np.exp(p.old_logprob - p.logprob))


@dataclass
class GroupView:
    problem_id: str
    round: int
    question: str
    answer: str
    rollouts: list[RolloutView]
    selected: str | None          # the rollout asked for (None: the whole group)
    scheme: str | None = None
    alpha: float | None = None
    sources: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def focus(self) -> list[RolloutView]:
        return [r for r in self.rollouts if r.rollout_id == self.selected] if self.selected else self.rollouts

    @property
    def accuracy(self) -> float:
        return float(np.mean([r.correct for r in self.rollouts])) if self.rollouts else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- tokenizer
def tokenizer_or_reason(policy: str) -> tuple[Any | None, str | None]:
    """(tokenizer with .decode(ids, skip_special_tokens=...), None) or (None, why it did not load)."""
    d = Path(policy)
    if (d / "tokenizer.json").is_file():
        try:
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(d / "tokenizer.json")), None
        except Exception as e:  # a damaged file: say so, fall back to char-level
            return None, f"{d / 'tokenizer.json'}: could not load ({type(e).__name__}: {e})"
    if not d.is_dir():
        return None, f"policy {policy}: not a directory here, tokens not shown (char-level steps only)"
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(d), trust_remote_code=False), None
    except Exception as e:  # transformers raises many kinds for a directory without a tokenizer
        return None, f"policy {policy}: no tokenizer ({type(e).__name__}), tokens not shown (char-level steps only)"


def _at(x: np.ndarray | None, t: int) -> float | None:
    return None if x is None else float(x[t])


def _sum(x: np.ndarray | None, a: int, b: int) -> float | None:
    return None if x is None or b <= a else float(x[a:b].sum())


def _token_pieces(tok, ids: list[int], adv: np.ndarray | None, step_of: np.ndarray, thought_of: np.ndarray,
                  steps: list[StepView], lp: np.ndarray | None = None,
                  old: np.ndarray | None = None) -> tuple[list[Piece], list[tuple[int, int]]]:
    offsets = token_char_offsets(tok, ids)
    full = tok.decode(list(ids), skip_special_tokens=True)
    pieces = []
    for t, (a, b) in enumerate(offsets):
        special = b == a and tok.decode([ids[t]], skip_special_tokens=True) == ""
        text = full[a:b] if b > a else (tok.decode([ids[t]], skip_special_tokens=False) if special else "")
        s = int(step_of[t])
        pieces.append(Piece(text, a, t, t + 1, None if adv is None else float(adv[t]), s if s >= 0 else None,
                            steps[s].label if s >= 0 else None, int(thought_of[t]) if thought_of[t] >= 0 else None,
                            special, _at(lp, t), _at(old, t)))
    return pieces, offsets


def _char_pieces(completion: str, n: int, adv: np.ndarray | None, steps: list[StepView],
                 thought_of: np.ndarray, lp: np.ndarray | None = None, old: np.ndarray | None = None) -> list[Piece]:
    """One piece per step and per gap between steps (separators, preamble, answer part)."""
    spans: list[tuple[int, int, int, int, int | None]] = []  # char a, char b, token a, token b, step
    pos_c, pos_t = 0, 0
    for s in steps:
        if s.char_start > pos_c:
            spans.append((pos_c, s.char_start, pos_t, max(pos_t, s.token_start), None))
        spans.append((s.char_start, s.char_end, s.token_start, s.token_end, s.idx))
        pos_c, pos_t = s.char_end, s.token_end
    if pos_c < len(completion) or not spans:
        spans.append((pos_c, len(completion), pos_t, n, None))
    pieces = []
    for a, b, ta, tb, si in spans:
        tb = min(tb, n)
        mean = float(adv[ta:tb].mean()) if adv is not None and tb > ta else None
        th = int(thought_of[ta]) if ta < n and thought_of[ta] >= 0 else None
        pieces.append(Piece(completion[a:b], a, ta, tb, mean, si, steps[si].label if si is not None else None, th,
                            False, _sum(lp, ta, tb), _sum(old, ta, tb)))
    return pieces


# --------------------------------------------------------------------------------------------- gathering
def _pick_group(ro: pl.DataFrame, rollout_id: str | None, problem_id: str | None,
                notes: list[str]) -> tuple[pl.DataFrame, str | None]:
    if rollout_id is not None:
        hit = ro.filter(pl.col("rollout_id") == rollout_id)
        if hit.height == 0:
            raise ThinkrlError(f"no rollout '{rollout_id}' in the rollouts (e.g. {', '.join(ro['rollout_id'].head(3))})")
        pid, rnd = hit["problem_id"][0], hit["round"][0]
    else:
        pid = problem_id if problem_id is not None else ro["problem_id"][0]
        hit = ro.filter(pl.col("problem_id") == pid)
        if hit.height == 0:
            raise ThinkrlError(f"no problem '{pid}' in the rollouts (e.g. {', '.join(ro['problem_id'].unique(maintain_order=True).head(3))})")
        rounds = sorted(set(hit["round"]))
        rnd = rounds[0]
        if len(rounds) > 1:
            notes.append(f"problem {pid} has rollouts of rounds {rounds}: showing round {rnd}")
    group = ro.filter((pl.col("problem_id") == pid) & (pl.col("round") == rnd)).sort("sample_idx")
    return group, rollout_id


def _steps(j: pl.DataFrame | None, rid: str) -> list[StepView]:
    if j is None:
        return []
    rows = j.filter(pl.col("rollout_id") == rid).sort("step_idx")
    return [StepView(r["step_idx"], r["char_start"], r["char_end"], r["token_start"], r["token_end"], r["label"],
                     r["text"], r["rationale"]) for r in rows.iter_rows(named=True)]


def _reply(j: pl.DataFrame | None, rid: str) -> str | None:
    """The judge's raw reply for the rollout (the same on each of its step rows), if the table has one."""
    if j is None or "reply" not in j.columns:
        return None
    found = j.filter((pl.col("rollout_id") == rid) & pl.col("reply").is_not_null())["reply"]
    return found[0] if found.len() else None


def _thoughts(th: pl.DataFrame | None, rid: str, steps: list[StepView], n: int,
              completion: str) -> tuple[list[tuple], str]:
    """(idx, token_start, token_end, label, reward|None, char_start, char_end) per thought and where they came
    from."""
    if th is not None:
        rows = th.filter(pl.col("rollout_id") == rid).sort("thought_idx")
        if rows.height:
            return [(r["thought_idx"], r["token_start"], r["token_end"], r["label"], float(r["reward"]),
                     r["char_start"], r["char_end"]) for r in rows.iter_rows(named=True)], "thoughts table"
    labels, answer = step_labels(((s.token_start, s.token_end, s.label, s.char_start, s.char_end) for s in steps),
                                 n, len(completion))
    if labels is not None:
        return [(i, t.token_start, t.token_end, t.label, None, t.char_start, t.char_end)
                for i, t in enumerate(merge_thoughts(labels, answer))], "judgments (merged here)"
    return [], "judgment failed: every step unknown (outcome advantage)" if steps else "none"


def _per_token(values: list[float] | None, n: int, what: str, rid: str, notes: list[str]) -> np.ndarray | None:
    if values is None:
        return None
    x = np.asarray(values, dtype=np.float64)
    if x.size != n:
        notes.append(f"{rid}: {x.size} {what} for {n} completion tokens (misaligned): not shown")
        return None
    return x


def _rollout(r: dict, steps: list[StepView], spec: list[tuple], spec_source: str, adv_row: dict | None,
             dropped: bool | None, r_hat: float, tok, notes: list[str], old_lp: list[float] | None = None,
             reply: str | None = None) -> RolloutView:
    ids = list(r["completion_ids"])
    n = len(ids)
    lp = _per_token(r["logprobs"], n, "sampler log-probs", r["rollout_id"], notes)
    old = _per_token(old_lp, n, "log pi_old values", r["rollout_id"], notes)
    adv = None
    if adv_row is not None:
        adv = np.asarray(adv_row["advantages"], dtype=np.float64)
        if adv.size != n:
            notes.append(f"{r['rollout_id']}: {adv.size} advantages for {n} completion tokens (misaligned)")
            adv = np.resize(adv, n) if adv.size else None
    elif dropped:
        adv = np.zeros(n)
    step_of = np.full(n, -1)
    for s in steps:
        step_of[max(0, s.token_start):min(n, s.token_end)] = s.idx
    thought_of = np.full(n, -1)
    for idx, a, b, *_ in spec:
        thought_of[max(0, a):min(n, b)] = idx
    pieces, offsets = None, None
    if tok is not None:
        try:
            pieces, offsets = _token_pieces(tok, ids, adv, step_of, thought_of, steps, lp, old)
        except Exception as e:  # ids the tokenizer does not know: another tokenizer than the sampler's
            notes.append(f"{r['rollout_id']}: tokens not decoded ({type(e).__name__}: {e}); char-level view")
    if pieces is None:
        pieces = _char_pieces(r["completion"], n, adv, steps, thought_of, lp, old)
    thoughts = []
    for idx, a, b, label, reward, ca, cb in spec:
        seg = adv[max(0, a):min(n, b)] if adv is not None else np.empty(0)
        members = [s.idx for s in steps if ca <= s.char_start < cb]
        thoughts.append(ThoughtView(idx, a, b, label, reward, ca, cb, r["completion"][ca:cb], members,
                                    float(seg.min()) if seg.size else None, float(seg.max()) if seg.size else None))
    answer_char = max([s.char_end for s in steps], default=0)
    return RolloutView(
        rollout_id=r["rollout_id"], sample_idx=r["sample_idx"], completion=r["completion"], correct=bool(r["correct"]),
        pred_answer=r["pred_answer"], answer=r["answer"], finish_reason=r["finish_reason"], policy=r["policy"],
        n_tokens=n, steps=steps, thoughts=thoughts, thoughts_source=spec_source,
        advantages=None if adv is None else [float(x) for x in adv],
        tokens=None if offsets is None else [p.text if not p.special else "" for p in pieces],
        outcome_advantage=float(adv_row["outcome_advantage"]) if adv_row is not None else r_hat,
        outcome_source="advantages table" if adv_row is not None else "computed from the group",
        dropped=dropped, pieces=pieces, token_level=offsets is not None, answer_char_start=answer_char,
        reply=reply, logprobs=None if lp is None else lp.tolist(), old_logprobs=None if old is None else old.tolist(),
        ratio_valid=adv_row is None or adv_row["behaviour_logprobs"] is not None)


def _behaviour(train_dir: str | Path | None, ids: list[str], notes: list[str]) -> dict[str, list[float]]:
    """rollout_id -> log pi_old from the train artifact's behaviour table (empty: not recomputed, or none)."""
    if not train_dir:
        return {}
    if "behaviour" not in read_manifest(train_dir)["outputs"]:
        notes.append(f"{train_dir}: no behaviour table (carried forward or an older trainer): no log pi_old")
        return {}
    b = read_table(train_dir, "behaviour", allow_empty=True)
    if b.height == 0:
        notes.append(f"{train_dir}: empty behaviour table (trained with --no-recompute-logprobs: log pi_old was "
                     "the sampler's own)")
    b = b.filter(pl.col("rollout_id").is_in(ids))
    return {r["rollout_id"]: r["logprobs"] for r in b.iter_rows(named=True)}


def rollout_view(rollouts_dir: str | Path, judgments_dir: str | Path | None = None,
                 thoughts_dir: str | Path | None = None, rollout_id: str | None = None,
                 problem_id: str | None = None, tokenizer: Any = "auto",
                 train_dir: str | Path | None = None) -> GroupView:
    """Gather the group (problem, round) of `rollout_id` (or of `problem_id`; default: the first problem);
    with `train_dir` (the train artifact made from the thoughts) also the trainer's log pi_old per token.

    tokenizer: "auto" loads the policy's tokenizer from the rollouts' `policy` column; None skips tokens
    (char-level view); or any object with `.decode(ids, skip_special_tokens=...)`."""
    notes: list[str] = []
    ro = read_table(rollouts_dir, "rollouts")
    group, selected = _pick_group(ro, rollout_id, problem_id, notes)
    ids = group["rollout_id"].to_list()
    j = read_table(judgments_dir, "judgments", allow_empty=True).filter(pl.col("rollout_id").is_in(ids)) \
        if judgments_dir else None
    th = adv_rows = None
    scheme = alpha = None
    if thoughts_dir:
        th = read_table(thoughts_dir, "thoughts", allow_empty=True).filter(pl.col("rollout_id").is_in(ids))
        adv_df = read_table(thoughts_dir, "advantages", allow_empty=True).filter(pl.col("rollout_id").is_in(ids))
        adv_rows = {r["rollout_id"]: r for r in adv_df.iter_rows(named=True)}
        m = read_manifest(thoughts_dir)
        scheme = (m.get("metrics") or {}).get("scheme") or (m.get("config") or {}).get("scheme")
        alpha = (m.get("metrics") or {}).get("alpha") or (m.get("config") or {}).get("alpha")
    if judgments_dir is None:
        notes.append("no judgments artifact: steps and labels unknown")
    if thoughts_dir is None:
        notes.append("no thoughts artifact: rewards and per-token advantages unknown")
    tok = None
    if tokenizer == "auto":
        tok, why = tokenizer_or_reason(str(policy_of(rollouts_dir, group["policy"][0])))
        if why:
            notes.append(why)
    elif tokenizer is not None:
        tok = tokenizer
    old_lps = _behaviour(train_dir, ids, notes)
    r_hat = outcome_advantages(group["correct"].to_list())
    views = []
    for r, rh in zip(group.iter_rows(named=True), r_hat, strict=True):
        rid = r["rollout_id"]
        steps = _steps(j, rid)
        spec, source = _thoughts(th, rid, steps, len(r["completion_ids"]), r["completion"])
        adv_row = adv_rows.get(rid) if adv_rows is not None else None
        dropped = None if adv_rows is None else adv_row is None
        views.append(_rollout(r, steps, spec, source, adv_row, dropped, float(rh), tok, notes, old_lps.get(rid),
                              _reply(j, rid)))
    first = group.row(0, named=True)
    return GroupView(problem_id=first["problem_id"], round=first["round"], question=first["question"],
                     answer=first["answer"], rollouts=views, selected=selected, scheme=scheme, alpha=alpha,
                     sources={"rollouts": str(rollouts_dir), "judgments": str(judgments_dir) if judgments_dir else None,
                              "thoughts": str(thoughts_dir) if thoughts_dir else None,
                              "train": str(train_dir) if train_dir else None}, notes=notes)


def open_view(path: str | Path, judgments: str | Path | None = None, thoughts: str | Path | None = None,
              rollout_id: str | None = None, problem_id: str | None = None, tokenizer: Any = "auto",
              train: str | Path | None = None) -> GroupView:
    """`rollout_view` starting from any rollouts/judgments/thoughts artifact; explicit paths win. The train
    artifact is found beside the thoughts when not given."""
    rel = related_artifacts(path)
    view = rollout_view(rel.rollouts, judgments or rel.judgments, thoughts or rel.thoughts, rollout_id, problem_id,
                        tokenizer, train or rel.train)
    view.notes = rel.notes + view.notes
    return view
