"""The rollout view: why one rollout (or its group of G) was rewarded as it was (`thinkrl inspect --rollout`).

    view = open_view("runs/x/round-000/rollouts", rollout_id="arith-s0-000017/r0/s3")  # finds judgments, thoughts
    render_terminal(view, console)             # steps coloured by label, thought headers, per-thought table
    Path("g.html").write_text(render_html(view))   # the G rollouts side by side, tokens coloured by advantage

`rollout_view(rollouts, judgments, thoughts, rollout_id, problem_id)` gathers, for the group (problem, round)
of the chosen rollout: the completion, its steps with labels, char and token spans and the judge's
rationale (judgments), thought spans and rewards (thoughts table), per-token advantages and the outcome
advantage (advantages table; a rollout of the group missing from it was dropped: all-zero advantages),
and the tokens: completion ids decoded with the policy's tokenizer (from the rollouts' `policy` column;
`tokenizer.json` through `tokenizers`, else transformers' AutoTokenizer), char offsets from
`steps.token_char_offsets` (the judge's own mapping). When no tokenizer loads, the view is char-level:
one piece per step or gap, with the mean advantage of its token span.

`open_view(path, ...)` starts from any of the three artifacts: a judgments manifest's `inputs.rollouts`, a
thoughts manifest's `inputs.rollouts` and `inputs.judgments` lead back; artifacts in sibling directories
whose manifest inputs name this one (by sha256) lead forward (`round-NNN/{rollouts,judgments,thoughts}`).

Model output is untrusted text: the HTML page escapes every string (html.escape) and loads nothing.
"""

from __future__ import annotations

import html
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from thinkrl.artifacts import MANIFEST, fingerprint, read_manifest, read_table
from thinkrl.errors import ThinkrlError
from thinkrl.steps import token_char_offsets
from thinkrl.thoughts import merge_thoughts, outcome_advantages, step_labels

LABEL_STYLE = {"correct": "green", "incorrect": "bold red", "matched": "magenta", "unmatched": "grey50",
               "unknown": "yellow"}
LABEL_CSS = {"correct": "#16a34a", "incorrect": "#dc2626", "matched": "#c026d3", "unmatched": "#9ca3af",
             "unknown": "#ca8a04"}


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
    char_start: int
    char_end: int
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
    outcome_advantage: float
    outcome_source: str           # "advantages table" or "computed from the group"
    dropped: bool | None          # None: no thoughts artifact given
    pieces: list[Piece]
    token_level: bool
    answer_char_start: int        # where the answer part (after the last step) begins


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


# --------------------------------------------------------------------------------------------- finding artifacts
@dataclass
class Related:
    rollouts: Path
    judgments: Path | None
    thoughts: Path | None
    notes: list[str]


def _follow_input(art: Path, manifest: dict, name: str, notes: list[str]) -> Path | None:
    inp = (manifest.get("inputs") or {}).get(name)
    if not inp:
        return None
    p = Path(inp["path"])
    candidates = [p, art.parent / p.name]  # as written (absolute, or relative to where the stage ran), a sibling
    existing = [c for c in candidates if (c / MANIFEST).is_file()]
    for c in existing:
        if fingerprint(c) == inp.get("sha256"):
            return c
    if existing:
        notes.append(f"{existing[0]}: changed since {art} was made from it (sha256 differs): shown anyway")
        return existing[0]
    notes.append(f"{art}: its input {name} {p} is gone")
    return None


def _siblings_using(target: Path, name: str) -> list[Path]:
    """Artifacts beside `target` whose manifest input `name` is `target` (same sha256)."""
    sha = fingerprint(target)
    found = []
    for d in sorted(target.parent.iterdir()):
        if d == target or not (d / MANIFEST).is_file():
            continue
        try:
            inp = (read_manifest(d).get("inputs") or {}).get(name)
        except ThinkrlError:
            continue
        if inp and inp.get("sha256") == sha:
            found.append(d)
    return found


def related_artifacts(path: str | Path) -> Related:
    """The rollouts, judgments and thoughts artifacts that belong together, starting from any of them."""
    p = Path(path)
    m = read_manifest(p)
    tables, notes = m["outputs"], []
    rollouts = judgments = thoughts = None
    if "rollouts" in tables:
        rollouts = p
    elif "judgments" in tables:
        judgments, rollouts = p, _follow_input(p, m, "rollouts", notes)
    elif "thoughts" in tables:
        thoughts = p
        rollouts, judgments = _follow_input(p, m, "rollouts", notes), _follow_input(p, m, "judgments", notes)
    else:
        raise ThinkrlError(f"{p}: a '{m.get('stage')}' artifact (tables: {', '.join(tables)}); the rollout view "
                           "starts from a rollouts, judgments or thoughts artifact")
    if rollouts is None:
        raise ThinkrlError(f"{p}: cannot find the rollouts it was made from (manifest inputs.rollouts); "
                           "pass the rollouts artifact as PATH")
    if judgments is None:
        found = _siblings_using(rollouts, "rollouts")
        judgments = next((d for d in found if "judgments" in read_manifest(d)["outputs"]), None)
    if thoughts is None:
        found = _siblings_using(judgments, "judgments") if judgments else _siblings_using(rollouts, "rollouts")
        thoughts = next((d for d in found if "thoughts" in read_manifest(d)["outputs"]), None)
    return Related(rollouts, judgments, thoughts, notes)


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


def _token_pieces(tok, ids: list[int], adv: np.ndarray | None, step_of: np.ndarray, thought_of: np.ndarray,
                  steps: list[StepView]) -> tuple[list[Piece], list[tuple[int, int]]]:
    offsets = token_char_offsets(tok, ids)
    full = tok.decode(list(ids), skip_special_tokens=True)
    pieces = []
    for t, (a, b) in enumerate(offsets):
        special = b == a and tok.decode([ids[t]], skip_special_tokens=True) == ""
        text = full[a:b] if b > a else (tok.decode([ids[t]], skip_special_tokens=False) if special else "")
        s = int(step_of[t])
        pieces.append(Piece(text, a, t, t + 1, None if adv is None else float(adv[t]), s if s >= 0 else None,
                            steps[s].label if s >= 0 else None, int(thought_of[t]) if thought_of[t] >= 0 else None,
                            special))
    return pieces, offsets


def _char_pieces(completion: str, n: int, adv: np.ndarray | None, steps: list[StepView],
                 thought_of: np.ndarray) -> list[Piece]:
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
        pieces.append(Piece(completion[a:b], a, ta, tb, mean, si, steps[si].label if si is not None else None, th))
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


def _thoughts(th: pl.DataFrame | None, rid: str, steps: list[StepView], n: int) -> tuple[list[tuple], str]:
    """(idx, token_start, token_end, label, reward|None) per thought and where they came from."""
    if th is not None:
        rows = th.filter(pl.col("rollout_id") == rid).sort("thought_idx")
        if rows.height:
            return [(r["thought_idx"], r["token_start"], r["token_end"], r["label"], float(r["reward"]))
                    for r in rows.iter_rows(named=True)], "thoughts table"
    labels, answer_start = step_labels(((s.token_start, s.token_end, s.label) for s in steps), n)
    if labels is not None:
        return [(i, a, b, lab, None) for i, (a, b, lab, _) in enumerate(merge_thoughts(labels, answer_start))], \
            "judgments (merged here)"
    return [], "judgment failed: every step unknown (outcome advantage)" if steps else "none"


def _thought_chars(spec: list[tuple], steps: list[StepView], offsets: list[tuple[int, int]] | None,
                   n_chars: int) -> list[tuple[int, int, list[int]]]:
    out = []
    for k, (_, a, b, _, _) in enumerate(spec):
        members = [s.idx for s in steps if a <= s.token_start < b]
        if offsets is not None and b > a:
            ca = offsets[min(a, len(offsets) - 1)][0]
            cb = offsets[min(b, len(offsets)) - 1][1]
        elif members:
            ca = next(s.char_start for s in steps if s.idx == members[0])
            nxt = [st for _, st, _, _, _ in spec[k + 1:]]
            later = [s.char_start for s in steps if nxt and s.token_start >= nxt[0]]
            cb = later[0] if later else next(s.char_end for s in steps if s.idx == members[-1])
        else:
            ca = cb = n_chars
        out.append((ca, cb, members))
    return out


def _rollout(r: dict, steps: list[StepView], spec: list[tuple], spec_source: str, adv_row: dict | None,
             dropped: bool | None, r_hat: float, tok, notes: list[str]) -> RolloutView:
    ids = list(r["completion_ids"])
    n = len(ids)
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
    for idx, a, b, _, _ in spec:
        thought_of[max(0, a):min(n, b)] = idx
    pieces, offsets = None, None
    if tok is not None:
        try:
            pieces, offsets = _token_pieces(tok, ids, adv, step_of, thought_of, steps)
        except Exception as e:  # ids the tokenizer does not know: another tokenizer than the sampler's
            notes.append(f"{r['rollout_id']}: tokens not decoded ({type(e).__name__}: {e}); char-level view")
    if pieces is None:
        pieces = _char_pieces(r["completion"], n, adv, steps, thought_of)
    chars = _thought_chars(spec, steps, offsets, len(r["completion"]))
    thoughts = []
    for (idx, a, b, label, reward), (ca, cb, members) in zip(spec, chars, strict=True):
        seg = adv[max(0, a):min(n, b)] if adv is not None else np.empty(0)
        thoughts.append(ThoughtView(idx, a, b, label, reward, ca, cb, members,
                                    float(seg.min()) if seg.size else None, float(seg.max()) if seg.size else None))
    answer_char = max([s.char_end for s in steps], default=0)
    return RolloutView(
        rollout_id=r["rollout_id"], sample_idx=r["sample_idx"], completion=r["completion"], correct=bool(r["correct"]),
        pred_answer=r["pred_answer"], answer=r["answer"], finish_reason=r["finish_reason"], policy=r["policy"],
        n_tokens=n, steps=steps, thoughts=thoughts, thoughts_source=spec_source,
        advantages=None if adv is None else [float(x) for x in adv],
        outcome_advantage=float(adv_row["outcome_advantage"]) if adv_row is not None else r_hat,
        outcome_source="advantages table" if adv_row is not None else "computed from the group",
        dropped=dropped, pieces=pieces, token_level=offsets is not None, answer_char_start=answer_char)


def rollout_view(rollouts_dir: str | Path, judgments_dir: str | Path | None = None,
                 thoughts_dir: str | Path | None = None, rollout_id: str | None = None,
                 problem_id: str | None = None, tokenizer: Any = "auto") -> GroupView:
    """Gather the group (problem, round) of `rollout_id` (or of `problem_id`; default: the first problem).

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
        tok, why = tokenizer_or_reason(group["policy"][0])
        if why:
            notes.append(why)
    elif tokenizer is not None:
        tok = tokenizer
    r_hat = outcome_advantages(group["correct"].to_list())
    views = []
    for r, rh in zip(group.iter_rows(named=True), r_hat, strict=True):
        rid = r["rollout_id"]
        steps = _steps(j, rid)
        spec, source = _thoughts(th, rid, steps, len(r["completion_ids"]))
        adv_row = adv_rows.get(rid) if adv_rows is not None else None
        dropped = None if adv_rows is None else adv_row is None
        views.append(_rollout(r, steps, spec, source, adv_row, dropped, float(rh), tok, notes))
    first = group.row(0, named=True)
    return GroupView(problem_id=first["problem_id"], round=first["round"], question=first["question"],
                     answer=first["answer"], rollouts=views, selected=selected, scheme=scheme, alpha=alpha,
                     sources={"rollouts": str(rollouts_dir), "judgments": str(judgments_dir) if judgments_dir else None,
                              "thoughts": str(thoughts_dir) if thoughts_dir else None}, notes=notes)


def open_view(path: str | Path, judgments: str | Path | None = None, thoughts: str | Path | None = None,
              rollout_id: str | None = None, problem_id: str | None = None, tokenizer: Any = "auto") -> GroupView:
    """`rollout_view` starting from any rollouts/judgments/thoughts artifact; explicit paths win."""
    rel = related_artifacts(path)
    view = rollout_view(rel.rollouts, judgments or rel.judgments, thoughts or rel.thoughts, rollout_id, problem_id,
                        tokenizer)
    view.notes = rel.notes + view.notes
    return view


# --------------------------------------------------------------------------------------------- terminal
def _fmt_adv(v: float | None) -> str:
    return "–" if v is None else f"{v:+.3f}"


def _adv_range(t: ThoughtView) -> str:
    if t.adv_min is None:
        return "–"
    return _fmt_adv(t.adv_min) if abs(t.adv_max - t.adv_min) < 5e-4 else f"{t.adv_min:+.3f}..{t.adv_max:+.3f}"


def render_terminal(view: GroupView, console) -> None:
    """Group header, then each focused rollout: header, completion with steps coloured by label and a line
    per thought, per-thought and per-step tables. Several rollouts: a group summary table at the end."""
    from rich.rule import Rule
    from rich.text import Text

    console.print(Rule(f"problem {view.problem_id} · round {view.round}"))
    q = view.question if len(view.question) <= 400 else view.question[:399] + "…"
    console.print(Text.assemble(("question: ", "bold"), q))
    console.print(Text.assemble(("gold: ", "bold"), view.answer, "   ", ("group: ", "bold"),
                                f"{sum(r.correct for r in view.rollouts)}/{len(view.rollouts)} correct",
                                "   ", ("scheme: ", "bold"), f"{view.scheme or '?'}"
                                + (f" (α={view.alpha})" if view.alpha is not None else "")))
    console.print(Text.assemble(("labels: ", "bold"), *[(f"{k} ", v) for k, v in LABEL_STYLE.items()]))
    for note in view.notes:
        console.print(f"[dim]note: {note}[/dim]", highlight=False)
    for rv in view.focus:
        _render_rollout(rv, console)
    if len(view.focus) > 1:
        _group_table(view, console)


def completion_text(rv: RolloutView):
    """The completion as a rich Text, each step styled by its label (LABEL_STYLE)."""
    from rich.text import Text

    body = Text(rv.completion)
    for s in rv.steps:
        body.stylize(LABEL_STYLE.get(s.label, "yellow"), s.char_start, s.char_end)
    return body


def _render_rollout(rv: RolloutView, console) -> None:
    from rich.rule import Rule
    from rich.text import Text

    console.print()
    console.print(Rule(rv.rollout_id, style="cyan"))
    verdict = ("✓ correct", "bold green") if rv.correct else ("✗ incorrect", "bold red")
    dropped = {None: "", True: "   DROPPED (all-zero advantages, not trained on)", False: "   kept for training"}
    console.print(Text.assemble(verdict, "   pred ", (str(rv.pred_answer), "bold"), " vs gold ", (rv.answer, "bold"),
                                f"   finish {rv.finish_reason}   {rv.n_tokens} tokens   outcome advantage r̂ ",
                                (_fmt_adv(rv.outcome_advantage), "bold"), f" ({rv.outcome_source})",
                                (dropped[rv.dropped], "bold yellow" if rv.dropped else "dim")))
    body = completion_text(rv)
    thought_at = {t.char_start: t for t in rv.thoughts if t.char_end > t.char_start}
    answer_at = rv.answer_char_start if rv.steps and rv.answer_char_start < len(rv.completion) else None
    cuts = sorted({c for c in [*thought_at, answer_at] if c is not None and 0 < c < len(rv.completion)})
    for start, part in zip([0, *cuts], body.divide(cuts), strict=True):
        if start in thought_at:
            t = thought_at[start]
            reward = f" · reward {_fmt_adv(t.reward)}" if t.reward is not None else ""
            console.print(Text(f"‖ thought {t.idx} · {t.label}{reward} · tokens {t.token_start}–{t.token_end}",
                               style=LABEL_STYLE.get(t.label, "yellow")))
        elif start == answer_at:
            console.print(Text(f"‖ answer part · advantage r̂ {_fmt_adv(rv.outcome_advantage)}", style="dim"))
        part.rstrip()
        part = part[len(part.plain) - len(part.plain.lstrip("\n")):]
        if part.plain:
            console.print(part)
    _thought_table(rv, console)
    _step_table(rv, console)


def _answer_tokens(rv: RolloutView) -> tuple[int, str] | None:
    """(first token, advantage range) of the tokens after the last thought (answer part, EOS), if any."""
    last = max((th.token_end for th in rv.thoughts), default=rv.n_tokens)
    if rv.advantages is None or last >= rv.n_tokens:
        return None
    tail = rv.advantages[last:]
    return last, _fmt_adv(min(tail)) if max(tail) - min(tail) < 5e-4 else f"{min(tail):+.3f}..{max(tail):+.3f}"


def _thought_table(rv: RolloutView, console) -> None:
    from rich.table import Table

    if not rv.thoughts:
        return
    t = Table(title=f"thoughts ({rv.thoughts_source})", title_justify="left", header_style="bold")
    for c in ("#", "label", "steps", "tokens", "n", "reward", "token advantages", "starts with"):
        t.add_column(c, justify="right" if c in ("#", "n", "reward", "token advantages") else "left")
    for th in rv.thoughts:
        steps = f"{th.steps[0]}–{th.steps[-1]}" if len(th.steps) > 1 else ",".join(map(str, th.steps))
        text = re.sub(r"\s*\n\s*", " ⏎ ", rv.completion[th.char_start:th.char_end].strip())
        t.add_row(str(th.idx), f"[{LABEL_STYLE.get(th.label, 'yellow')}]{th.label}[/]", steps,
                  f"{th.token_start}–{th.token_end}", str(th.token_end - th.token_start), _fmt_adv(th.reward),
                  _adv_range(th), text[:48] + ("…" if len(text) > 48 else ""))
    tail = _answer_tokens(rv)
    if tail is not None:
        t.add_row("", "[dim]answer[/]", "", f"{tail[0]}–{rv.n_tokens}", str(rv.n_tokens - tail[0]), "", tail[1],
                  rv.completion[rv.answer_char_start:].strip()[:48])
    console.print()
    console.print(t)


def _step_table(rv: RolloutView, console) -> None:
    from rich.table import Table

    if not rv.steps:
        return
    t = Table(title="steps (judgments)", title_justify="left", header_style="bold")
    for c in ("step", "label", "chars", "tokens", "text", "judge's rationale"):
        t.add_column(c, overflow="fold", max_width=60 if c in ("text", "judge's rationale") else None)
    for s in rv.steps:
        t.add_row(str(s.idx), f"[{LABEL_STYLE.get(s.label, 'yellow')}]{s.label}[/]", f"{s.char_start}–{s.char_end}",
                  f"{s.token_start}–{s.token_end}", re.sub(r"\s*\n\s*", " ⏎ ", s.text)[:120], (s.rationale or "")[:160])
    console.print()
    console.print(t)


def _group_table(view: GroupView, console) -> None:
    from rich.table import Table

    t = Table(title=f"group {view.problem_id} (round {view.round})", title_justify="left", header_style="bold")
    for c in ("sample", "correct", "pred", "r̂", "tokens", "thoughts", "dropped"):
        t.add_column(c)
    for r in view.rollouts:
        labels = " ".join(f"[{LABEL_STYLE.get(th.label, 'yellow')}]{th.label[:4]}[/]" for th in r.thoughts)
        t.add_row(str(r.sample_idx), "[green]yes[/]" if r.correct else "[red]no[/]", str(r.pred_answer),
                  _fmt_adv(r.outcome_advantage), str(r.n_tokens), labels or "–",
                  {None: "?", True: "[yellow]yes[/]", False: "no"}[r.dropped])
    console.print()
    console.print(t)


# --------------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;color:#111;background:#fafafa}
h1{font-size:18px;margin:0 0 6px} .meta{font-size:13px;color:#333;margin:2px 0}
.q{white-space:pre-wrap;background:#fff;border:1px solid #ddd;padding:8px;border-radius:6px;font-size:13px}
.legend{font-size:12px;margin:8px 0;display:flex;flex-wrap:wrap;gap:14px;align-items:center}
.sw{display:inline-block;width:22px;height:14px;vertical-align:middle;border:1px solid #ccc}
.grid{display:grid;gap:10px;overflow-x:auto;align-items:start}
.col{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;min-width:0}
.col.sel{border:2px solid #2563eb}
.head{font-size:12px;border-bottom:1px solid #eee;padding-bottom:6px;margin-bottom:6px;line-height:1.5}
.ok{color:#16a34a;font-weight:bold} .bad{color:#dc2626;font-weight:bold}
.badge{display:inline-block;padding:0 5px;border-radius:4px;font-size:11px;background:#fef3c7;color:#92400e}
pre.text{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,Menlo,Consolas,monospace;
 font-size:12px;line-height:1.75;margin:0}
.t{border-bottom:3px solid transparent}
.sp{color:#6b7280;font-style:italic}
.tb{display:inline-block;font-size:10px;font-weight:bold;padding:0 3px;margin:0 2px;border-radius:3px;color:#fff;
 line-height:1.4;vertical-align:baseline}
table.th{border-collapse:collapse;font-size:11px;margin-top:8px;width:100%}
table.th td,table.th th{border-top:1px solid #eee;padding:2px 4px;text-align:right}
table.th td:nth-child(2),table.th th:nth-child(2){text-align:left}
.notes{font-size:12px;color:#555}
"""


def _adv_color(a: float | None, scale: float) -> str:
    if a is None or abs(a) < 1e-9:
        return "transparent"
    alpha = 0.12 + 0.6 * min(abs(a) / scale, 1.0)
    return f"rgba(22,163,74,{alpha:.2f})" if a > 0 else f"rgba(220,38,38,{alpha:.2f})"


def _label_css() -> str:
    return "".join(f".l-{k}{{border-bottom-color:{v}}} .tb.l-{k}{{background:{v}}}\n" for k, v in LABEL_CSS.items())


def _piece_html(p: Piece, rv: RolloutView, scale: float) -> str:
    e = html.escape
    thought = next((t for t in rv.thoughts if t.idx == p.thought), None) if p.thought is not None else None
    tip = [repr(p.text) if rv.token_level else f"{len(p.text)} chars",
           f"token {p.token_start}" if p.token_end - p.token_start == 1 else f"tokens {p.token_start}–{p.token_end}",
           f"advantage {_fmt_adv(p.advantage)}" + ("" if rv.token_level or p.advantage is None else " (mean)")]
    if p.step is not None:
        tip.append(f"step {p.step}: {p.label}")
    tip.append(f"thought {thought.idx}: {thought.label}" if thought else "answer part / outside thoughts")
    cls = "t" + (f" l-{p.label}" if p.label in LABEL_CSS else "") + (" sp" if p.special else "")
    return (f'<span class="{cls}" style="background:{_adv_color(p.advantage, scale)}" '
            f'title="{e(" · ".join(tip))}">{e(p.text)}</span>')


def _column_html(rv: RolloutView, selected: bool, scale: float) -> str:
    e = html.escape
    verdict = '<span class="ok">✓ correct</span>' if rv.correct else '<span class="bad">✗ incorrect</span>'
    badge = {None: "", True: ' <span class="badge">dropped: all-zero advantages</span>', False: ""}[rv.dropped]
    head = (f'<div class="head"><b>sample {rv.sample_idx}</b> {verdict}{badge}<br>pred <b>{e(str(rv.pred_answer))}</b>'
            f' · gold <b>{e(rv.answer)}</b><br>outcome advantage r̂ <b>{_fmt_adv(rv.outcome_advantage)}</b>'
            f' · {rv.n_tokens} tokens · {e(rv.finish_reason)}<br><span class="notes">{e(rv.rollout_id)}</span></div>')
    starts = {t.token_start: t for t in rv.thoughts}
    body = []
    seen: set[int] = set()
    for p in rv.pieces:
        t = starts.get(p.token_start) if rv.token_level else None
        if not rv.token_level and p.thought is not None and p.thought not in seen:
            t = next((x for x in rv.thoughts if x.idx == p.thought), None)
        if t is not None and t.idx not in seen:
            seen.add(t.idx)
            title = f"thought {t.idx}: {t.label}, reward {_fmt_adv(t.reward)}, tokens {t.token_start}–{t.token_end}"
            body.append(f'<span class="tb l-{e(t.label) if t.label in LABEL_CSS else "unknown"}" '
                        f'title="{e(title)}">‖{t.idx}</span>')
        body.append(_piece_html(p, rv, scale))
    rows = "".join(f"<tr><td>{t.idx}</td><td style=\"color:{LABEL_CSS.get(t.label, '#555')}\">{e(t.label)}</td>"
                   f"<td>{t.token_start}–{t.token_end}</td><td>{_fmt_adv(t.reward)}</td><td>{_adv_range(t)}</td></tr>"
                   for t in rv.thoughts)
    tail = _answer_tokens(rv)
    if tail is not None:
        rows += f"<tr><td></td><td>answer</td><td>{tail[0]}–{rv.n_tokens}</td><td></td><td>{tail[1]}</td></tr>"
    table = (f'<table class="th"><tr><th>#</th><th>label</th><th>tokens</th><th>reward</th><th>token adv</th></tr>'
             f"{rows}</table>") if rv.thoughts else ""
    return (f'<section class="col{" sel" if selected else ""}" id="{e(rv.rollout_id)}">{head}'
            f'<pre class="text">{"".join(body)}</pre>{table}</section>')


def render_html(view: GroupView) -> str:
    """A self-contained page (inline CSS, no scripts, no external assets) with the G rollouts side by side."""
    e = html.escape
    advs = [abs(p.advantage) for r in view.rollouts for p in r.pieces if p.advantage is not None]
    scale = max(max(advs, default=0.0), 1e-6)
    n = max(len(view.rollouts), 1)
    level = "token" if any(r.token_level for r in view.rollouts) else "char (no tokenizer: one span per step or gap)"
    swatches = "".join(f'<span class="sw" style="background:{_adv_color(v, scale)}" title="{v:+.2f}"></span>'
                       for v in np.linspace(-scale, scale, 7))
    labels = " ".join(f'<span class="t l-{k}" style="border-bottom-width:3px">{k}</span>' for k in LABEL_CSS)
    notes = "".join(f"<li>{e(x)}</li>" for x in view.notes)
    sources = " · ".join(f"{k}: <code>{e(str(v))}</code>" for k, v in view.sources.items() if v)
    cols = "".join(_column_html(r, r.rollout_id == view.selected, scale) for r in view.rollouts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{e(view.problem_id)} · round {view.round} · thinkrl rollout view</title>
<style>{_CSS}{_label_css()}.grid{{grid-template-columns:repeat({n},minmax(260px,1fr))}}</style></head>
<body>
<h1>Problem {e(view.problem_id)} · round {view.round} · {sum(r.correct for r in view.rollouts)}/{len(view.rollouts)} correct</h1>
<div class="meta">gold answer <b>{e(view.answer)}</b> · scheme <b>{e(str(view.scheme or "?"))}</b>
{f" (α={e(str(view.alpha))})" if view.alpha is not None else ""} · view: {e(level)}</div>
<div class="meta">{sources}</div>
<div class="q">{e(view.question)}</div>
<div class="legend"><span>advantage {-scale:+.2f} {swatches} {scale:+.2f} (background)</span>
<span>step label (underline): {labels}</span><span><span class="tb l-unknown">‖n</span> thought n begins</span>
<span>hover a token for its text, advantage, step and thought</span></div>
{f'<ul class="notes">{notes}</ul>' if notes else ""}
<main class="grid">{cols}</main>
</body></html>
"""
