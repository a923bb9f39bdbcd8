"""Rollout rendering: a rollout view (`thinkrl/rollout_view.py`) on the terminal and as an HTML page.

    render_terminal(view, console)             # steps coloured by label, thought headers, per-thought table
    Path("g.html").write_text(render_html(view))   # the G rollouts side by side, tokens coloured by advantage
    styled_completion(rollout)                   # the completion as rich Text, steps styled by LABEL_STYLE

Terminal (rich): the group header, then each focused rollout (verdict, outcome advantage, the completion with
a line where each thought and the answer part begin), its thought and step tables; with several rollouts a
group table. HTML: one column per rollout, the background of each token (or, char-level, each step or gap)
coloured by its advantage, the step label as an underline (LABEL_CSS), a mark where each thought begins;
hovering a token shows its advantage, the sampler's log-prob, the trainer's log pi_old and their ratio (where
they exist, `thinkrl/rollout_view.py` says where each comes from), its step with the judge's rationale; under
the text each column lists its thoughts, its steps with their rationale and, folded, the judge's raw reply.
The columns wrap into rows (a CSS grid of auto-fit tracks at least 280 px wide, text wrapping anywhere), so
no width of the window needs horizontal scrolling: at 1280 px a group of G = 8 is two rows of four.

Model output is untrusted text: the HTML page escapes every string (html.escape) and loads nothing (inline
CSS, no scripts, no external assets).

Against the paper: tooling for looking at rollouts, not part of the method (docs/PAPER.md).
"""

from __future__ import annotations

import html
import re

import numpy as np

from thinkrl.rollout_view import GroupView, Piece, RolloutView, ThoughtView

LABEL_STYLE = {"correct": "green", "incorrect": "bold red", "matched": "magenta", "unmatched": "grey50",
               "unknown": "yellow"}
LABEL_CSS = {"correct": "#16a34a", "incorrect": "#dc2626", "matched": "#c026d3", "unmatched": "#9ca3af",
             "unknown": "#ca8a04"}



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


def styled_completion(rv: RolloutView):
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
    body = styled_completion(rv)
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
        text = re.sub(r"\s*\n\s*", " ⏎ ", th.text.strip())
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
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;color:#111;background:#fafafa;
 overflow-wrap:anywhere}
code{word-break:break-all}
h1{font-size:18px;margin:0 0 6px} .meta{font-size:13px;color:#333;margin:2px 0}
.q{white-space:pre-wrap;background:#fff;border:1px solid #ddd;padding:8px;border-radius:6px;font-size:13px}
.legend{font-size:12px;margin:8px 0;display:flex;flex-wrap:wrap;gap:14px;align-items:center}
.sw{display:inline-block;width:22px;height:14px;vertical-align:middle;border:1px solid #ccc}
.grid{display:grid;gap:10px;align-items:start;grid-template-columns:repeat(auto-fit,minmax(min(280px,100%),1fr))}
.col{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;min-width:0;overflow-wrap:anywhere}
.col.sel{border:2px solid #2563eb}
.head{font-size:12px;border-bottom:1px solid #eee;padding-bottom:6px;margin-bottom:6px;line-height:1.5}
.ok{color:#16a34a;font-weight:bold} .bad{color:#dc2626;font-weight:bold}
.badge{display:inline-block;padding:0 5px;border-radius:4px;font-size:11px;background:#fef3c7;color:#92400e}
pre.text{white-space:pre-wrap;overflow-wrap:anywhere;font-family:ui-monospace,Menlo,Consolas,monospace;
 font-size:12px;line-height:1.75;margin:0}
.t{border-bottom:3px solid transparent}
.sp{color:#6b7280;font-style:italic}
.tb{display:inline-block;font-size:10px;font-weight:bold;padding:0 3px;margin:0 2px;border-radius:3px;color:#fff;
 line-height:1.4;vertical-align:baseline}
table.th{border-collapse:collapse;font-size:11px;margin-top:8px;width:100%}
table.th td,table.th th{border-top:1px solid #eee;padding:2px 4px;text-align:right}
table.th td:nth-child(2),table.th th:nth-child(2){text-align:left}
table.st{table-layout:fixed} table.st td:nth-child(1),table.st th:nth-child(1){width:3.2em;overflow-wrap:normal}
table.st td:nth-child(2),table.st th:nth-child(2){width:6.5em}
table.st td:nth-child(3),table.st th:nth-child(3){text-align:left}
details{font-size:11px;margin-top:6px} summary{cursor:pointer;color:#374151}
pre.reply{white-space:pre-wrap;overflow-wrap:anywhere;font-size:11px;background:#f3f4f6;padding:6px;margin:4px 0 0;
 max-height:24em;overflow-y:auto}
.notes{font-size:12px;color:#555}
"""


def _adv_color(a: float | None, scale: float) -> str:
    if a is None or abs(a) < 1e-9:
        return "transparent"
    alpha = 0.12 + 0.6 * min(abs(a) / scale, 1.0)
    return f"rgba(22,163,74,{alpha:.2f})" if a > 0 else f"rgba(220,38,38,{alpha:.2f})"


def _label_css() -> str:
    return "".join(f".l-{k}{{border-bottom-color:{v}}} .tb.l-{k}{{background:{v}}}\n" for k, v in LABEL_CSS.items())


def _short(text: str, n: int) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= n else text[:n - 1] + "…"


def _logprob_tip(p: Piece, rv: RolloutView) -> list[str]:
    """Hover lines of the log-probs: the sampler's, the trainer's log pi_old, their ratio (sums per piece)."""
    of = "" if rv.token_level else " (sum)"
    tip = []
    if p.logprob is not None:
        tip.append(f"log p sampler {p.logprob:.4f}{of} (p {np.exp(p.logprob):.3f})")
    if p.old_logprob is not None:
        tip.append(f"log π_old trainer {p.old_logprob:.4f}{of}")
    ratio = rv.ratio(p)
    if ratio is not None:
        tip.append(f"ratio π_old/p_sampler {ratio:.4f}")
    return tip


def _piece_html(p: Piece, rv: RolloutView, scale: float) -> str:
    e = html.escape
    thought = next((t for t in rv.thoughts if t.idx == p.thought), None) if p.thought is not None else None
    tip = [repr(p.text) if rv.token_level else f"{len(p.text)} chars",
           f"token {p.token_start}" if p.token_end - p.token_start == 1 else f"tokens {p.token_start}–{p.token_end}",
           f"advantage {_fmt_adv(p.advantage)}" + ("" if rv.token_level or p.advantage is None else " (mean)"),
           *_logprob_tip(p, rv)]
    if p.step is not None:
        why = next((s.rationale for s in rv.steps if s.idx == p.step), "")
        tip.append(f"step {p.step}: {p.label}" + (f" ({_short(why, 120)})" if why else ""))
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
            f'<pre class="text">{"".join(body)}</pre>{table}{_judge_html(rv)}</section>')


def _judge_html(rv: RolloutView) -> str:
    """The judge's side of a column: each step's label and rationale, then the raw reply folded (if any)."""
    e = html.escape
    out = ""
    if any(s.rationale for s in rv.steps):
        rows = "".join(f'<tr><td>{s.idx}</td><td style="color:{LABEL_CSS.get(s.label, "#555")}">{e(s.label)}</td>'
                       f'<td class="why">{e(s.rationale or "–")}</td></tr>' for s in rv.steps)
        out += (f'<table class="th st"><tr><th>step</th><th>label</th><th>judge\'s rationale</th></tr>{rows}'
                "</table>")
    if rv.reply:
        out += (f"<details><summary>judge's raw reply ({len(rv.reply):,} chars)</summary>"
                f'<pre class="reply">{e(rv.reply)}</pre></details>')
    return out


def _logprob_legend(view: GroupView) -> str:
    """What the hover shows of the log-probs and where they come from."""
    parts = []
    if any(r.logprobs is not None for r in view.rollouts):
        parts.append("log p sampler (rollouts.logprobs)")
    if any(r.old_logprobs is not None for r in view.rollouts):
        parts.append("log π_old recomputed by the trainer (train artifact, behaviour table) and the ratio "
                     "π_old/p_sampler (engine mismatch)")
    return ", ".join(parts) or "no log-probs"


def render_html(view: GroupView) -> str:
    """A self-contained page (inline CSS, no scripts, no external assets) with the G rollouts side by side."""
    e = html.escape
    advs = [abs(p.advantage) for r in view.rollouts for p in r.pieces if p.advantage is not None]
    scale = max(max(advs, default=0.0), 1e-6)
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
<style>{_CSS}{_label_css()}</style></head>
<body>
<h1>Problem {e(view.problem_id)} · round {view.round} · {sum(r.correct for r in view.rollouts)}/{len(view.rollouts)} correct</h1>
<div class="meta">gold answer <b>{e(view.answer)}</b> · scheme <b>{e(str(view.scheme or "?"))}</b>
{f" (α={e(str(view.alpha))})" if view.alpha is not None else ""} · view: {e(level)}</div>
<div class="meta">{sources}</div>
<div class="q">{e(view.question)}</div>
<div class="legend"><span>advantage {-scale:+.2f} {swatches} {scale:+.2f} (background)</span>
<span>step label (underline): {labels}</span><span><span class="tb l-unknown">‖n</span> thought n begins</span>
<span>hover a token for its text, advantage, {e(_logprob_legend(view))}, step (with the judge's rationale) and
thought</span></div>
{f'<ul class="notes">{notes}</ul>' if notes else ""}
<main class="grid">{cols}</main>
</body></html>
"""
