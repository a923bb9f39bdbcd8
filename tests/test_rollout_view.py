"""thinkrl.rollout_view, thinkrl.lineage, thinkrl.rollout_render and `thinkrl inspect --rollout/--problem/--html`:
a real tokenizer, steps cut and mapped to tokens like the judge does, thoughts and advantages from the real
segment stage."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import replace

import polars as pl
import pytest
from rich.console import Console

from thinkrl.artifacts import ArtifactWriter, read_table, write_artifact
from thinkrl.lineage import related_artifacts
from thinkrl.rollout_render import LABEL_STYLE, render_html, render_terminal, styled_completion
from thinkrl.rollout_view import open_view, rollout_view
from thinkrl.segment import Sampling, segment
from thinkrl.steps import split_steps, token_char_offsets, token_span, token_spans
from thinkrl.tokenizer import EOS, build_tokenizer

S0 = ("17 + 28 = 45\n\n45 * 3 = 125\n\nWait, 45 * 3 = 135, not 125.\n\n135 - 5 = 130\n\n"
      "The answer is \\boxed{130}")
S1 = "17 + 28 = 45\n\n45 * 3 = 145\n\n<script>alert('x')</script> & more\n\nThe answer is \\boxed{140}"
S2 = "17 + 28 = 45\n\n45 * 3 = 135\n\n135 - 5 = 130\n\nThe answer is \\boxed{130}"
GROUP = [  # (completion, correct, pred, labels per step)
    (S0, True, "130", ["correct", "incorrect", "incorrect", "correct"]),
    (S1, False, "140", ["unmatched", "matched", "matched"]),
    (S2, True, "130", ["correct", "correct", "correct"]),
]
WRONG = [("2 + 2 = 5\n\nThe answer is \\boxed{5}", False, "5", ["matched"])] * 2  # all wrong: dropped
QUESTION = "Start at 17. Add 28. Multiply by 3. Subtract 5."


@pytest.fixture(scope="module")
def arts(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("view")
    tok = build_tokenizer([c for c, *_ in GROUP + WRONG] * 20 + [QUESTION])
    policy = root / "policy"
    tok.save_pretrained(policy)
    eos = tok.convert_tokens_to_ids(EOS)
    ro_rows, j_rows = [], []
    for pid, group in (("arith-1", GROUP), ("arith-2", WRONG)):
        for j, (text, ok, pred, labels) in enumerate(group):
            ids = tok.encode(text, add_special_tokens=False) + [eos]
            rid = f"{pid}/r0/s{j}"
            ro_rows.append({"rollout_id": rid, "problem_id": pid, "question": QUESTION, "sample_idx": j, "round": 0,
                            "policy": str(policy), "template": "raw", "prompt": QUESTION, "completion": text,
                            "prompt_ids": [1], "completion_ids": ids, "logprobs": [-0.5] * len(ids),
                            "finish_reason": "stop", "answer": "130", "pred_answer": pred, "correct": ok, "seed": j})
            steps, _ = split_steps(text, "blank")
            assert len(steps) == len(labels)
            spans = token_spans(steps, token_char_offsets(tok, ids))
            for s, (a, b), lab in zip(steps, spans, labels, strict=True):
                j_rows.append({"rollout_id": rid, "step_idx": s.idx, "char_start": s.char_start,
                               "char_end": s.char_end, "token_start": a, "token_end": b, "text": s.text,
                               "label": lab, "judge": "test", "rationale": f"because {lab}"})
    rnd = root / "run" / "round-000"
    write_artifact(rnd / "rollouts", "sample", {}, {"rollouts": ro_rows})
    write_artifact(rnd / "judgments", "judge", {}, {"judgments": j_rows}, inputs={"rollouts": rnd / "rollouts"})
    w = ArtifactWriter(rnd / "thoughts", "segment", {"scheme": "thought"},
                       inputs={"rollouts": rnd / "rollouts", "judgments": rnd / "judgments"})
    segment(read_table(rnd / "rollouts", "rollouts"), read_table(rnd / "judgments", "judgments"), "thought", 1.0,
            w, Sampling(1.0, 64))
    # the trainer's log pi_old of the kept rollouts (the sampler said -0.5 for every token): -0.4 on s0's tokens
    kept = read_table(rnd / "thoughts", "advantages")
    write_artifact(rnd / "train", "train", {}, {
        "train_metrics": [{"step": 1, "round": 0, "loss": 0.1, "kl": 0.0, "clip_frac": 0.0, "ratio_mean": 1.0,
                           "grad_norm": 1.0, "lr": 1e-4, "tokens": 10, "dropped_rollouts": 2, "skipped": False,
                           "seconds": 0.1, "mfu": 0.0, "reward_mean": 0.5, "reward_std": 0.5, "accuracy": 0.5,
                           "response_len_mean": 3.0, "response_len_max": 4, "truncation_rate": 0.0, "adv_mean": 0.0,
                           "adv_std": 1.0, "adv_min": -1.0, "adv_max": 1.0, "incorrect_thought_share": 0.0,
                           "entropy": 1.0, "tokens_per_s": 100.0}],
        "behaviour": [{"rollout_id": r["rollout_id"], "logprobs": [-0.4 if r["rollout_id"].endswith("s0") else -0.5]
                       * len(r["completion_ids"])} for r in kept.iter_rows(named=True)]},
        inputs={"thoughts": rnd / "thoughts"})
    return {"root": root, "rollouts": rnd / "rollouts", "judgments": rnd / "judgments", "thoughts": rnd / "thoughts",
            "train": rnd / "train", "tok": tok}


def test_related_artifacts_follow_inputs_both_ways(arts):
    for start in ("rollouts", "judgments", "thoughts"):
        rel = related_artifacts(arts[start])
        assert (rel.rollouts, rel.judgments, rel.thoughts) == (arts["rollouts"], arts["judgments"], arts["thoughts"])
        assert rel.train == arts["train"]  # the sibling whose inputs.thoughts is the thoughts artifact


def test_one_rollout_steps_thoughts_and_token_advantages(arts):
    view = rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], rollout_id="arith-1/r0/s0")
    assert [r.rollout_id for r in view.focus] == ["arith-1/r0/s0"] and len(view.rollouts) == 3
    assert view.scheme == "thought" and view.accuracy == pytest.approx(2 / 3)
    rv = view.focus[0]
    assert [s.label for s in rv.steps] == GROUP[0][3]
    assert [(t.label, t.steps) for t in rv.thoughts] == [("correct", [0]), ("incorrect", [1, 2]), ("correct", [3])]
    r_hat = rv.outcome_advantage
    assert rv.outcome_source == "advantages table" and r_hat > 0 and rv.dropped is False
    assert [t.reward for t in rv.thoughts] == pytest.approx([r_hat, r_hat - 2 / 3, r_hat])  # α·acc, α = 1
    # token level: one piece per completion token, texts rebuild the completion, advantages aligned
    assert rv.token_level and len(rv.pieces) == rv.n_tokens == len(rv.advantages)
    assert "".join(p.text for p in rv.pieces if not p.special) == S0
    assert rv.pieces[-1].special and rv.pieces[-1].text == EOS
    for p in rv.pieces:
        assert p.advantage == pytest.approx(rv.advantages[p.token_start])
        if p.thought is not None:
            assert p.advantage == pytest.approx(rv.thoughts[p.thought].reward)
    wrong = [p.text for p in rv.pieces if p.label == "incorrect"]
    assert "".join(wrong).startswith("45 * 3 = 125") and "Wait" in "".join(wrong)
    # thought char spans: the incorrect thought covers steps 1..2
    t1 = rv.thoughts[1]
    assert S0[t1.char_start:t1.char_end].strip() == "45 * 3 = 125\n\nWait, 45 * 3 = 135, not 125."


def test_token_strings_beside_the_advantages_rebuild_the_decoded_completion(arts):
    """`tokens[t]` is token t's text, next to `advantages[t]`: they concatenate to the decoded completion (EOS
    adds ''), in the view and in the JSON of `inspect --json`; char-level (no tokenizer) there are none."""
    view = rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], problem_id="arith-1")
    ro = {r["rollout_id"]: r for r in read_table(arts["rollouts"], "rollouts").iter_rows(named=True)}
    for rv in view.rollouts:
        ids = ro[rv.rollout_id]["completion_ids"]
        assert len(rv.tokens) == len(rv.advantages) == len(ids)
        assert "".join(rv.tokens) == arts["tok"].decode(ids, skip_special_tokens=True) == rv.completion
        assert rv.tokens[-1] == ""                                        # EOS
        assert rv.tokens == [arts["tok"].decode([i]) for i in ids[:-1]] + [""]  # one text per token here
        for t in rv.thoughts:                                             # each thought's tokens spell its text
            assert "".join(rv.tokens[t.token_start:t.token_end]) == t.text == rv.completion[t.char_start:t.char_end]
    d = view.to_dict()["rollouts"][0]
    assert d["tokens"] == view.rollouts[0].tokens and len(d["tokens"]) == len(d["advantages"])
    flat = rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], problem_id="arith-1", tokenizer=None)
    assert all(rv.tokens is None for rv in flat.rollouts)


def test_thoughts_table_char_spans_follow_the_token_spans(arts):
    """Every thought row's text is completion[char_start:char_end], and its tokens are exactly those whose
    first character lies in its char span (the rule of the judgments' step spans), with the real tokenizer."""
    ro = {r["rollout_id"]: r for r in read_table(arts["rollouts"], "rollouts").iter_rows(named=True)}
    th = read_table(arts["thoughts"], "thoughts")
    assert th.height == 8                                               # arith-1: 3 + 2 + 1 thoughts; arith-2: 1 + 1
    for t in th.iter_rows(named=True):
        r = ro[t["rollout_id"]]
        assert t["text"] == r["completion"][t["char_start"]:t["char_end"]] and t["text"]
        offsets = token_char_offsets(arts["tok"], r["completion_ids"])
        assert token_span(t["char_start"], t["char_end"], offsets) == (t["token_start"], t["token_end"])
    s0 = th.filter(pl.col("rollout_id") == "arith-1/r0/s0").sort("thought_idx")["text"].to_list()
    assert s0 == ["17 + 28 = 45\n\n", "45 * 3 = 125\n\nWait, 45 * 3 = 135, not 125.\n\n", "135 - 5 = 130"]


def test_group_of_all_wrong_is_dropped(arts):
    view = rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], problem_id="arith-2")
    assert view.selected is None and len(view.focus) == 2
    for rv in view.rollouts:
        assert rv.dropped is True and rv.outcome_source == "computed from the group"
        assert set(rv.advantages) == {0.0} and rv.outcome_advantage == 0.0


def test_char_level_without_tokenizer(arts):
    view = rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], rollout_id="arith-1/r0/s0",
                        tokenizer=None)
    rv = view.focus[0]
    assert not rv.token_level
    assert "".join(p.text for p in rv.pieces) == S0
    steps = [p for p in rv.pieces if p.step is not None]
    assert [p.label for p in steps] == GROUP[0][3]
    assert steps[1].advantage == pytest.approx(rv.thoughts[1].reward)  # mean over the step's tokens


def test_terminal_colours_steps_and_marks_thoughts(arts):
    view = rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], rollout_id="arith-1/r0/s0")
    rv = view.focus[0]
    text = styled_completion(rv)
    for s in rv.steps:
        styles = {str(sp.style) for sp in text.spans if sp.start == s.char_start and sp.end == s.char_end}
        assert styles == {LABEL_STYLE[s.label]}
    con = Console(record=True, width=160, force_terminal=False)
    render_terminal(view, con)
    out = con.export_text()
    assert "✓ correct" in out and "pred 130 vs gold 130" in out
    assert re.search(r"‖ thought 1 · incorrect · reward [-+]\d\.\d{3} · tokens \d+–\d+", out)
    assert "‖ answer part" in out and "because incorrect" in out and "thoughts (thoughts table)" in out


def test_html_self_contained_escaped_g_columns(arts):
    view = rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], rollout_id="arith-1/r0/s1")
    page = render_html(view)
    assert page.count('<section class="col') == 3 and "repeat(auto-fit," in page and "overflow-x" not in page
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page and "<link" not in page
    assert 'class="col sel"' in page  # the rollout asked for
    assert "rgba(220,38,38," in page and "rgba(22,163,74," in page  # negative and positive advantages
    assert "l-incorrect" in page and "l-matched" in page and "‖1</span>" in page
    assert re.search(r'title="[^"]*advantage [-+]\d\.\d{3}[^"]*thought \d: incorrect', page)


def test_cli_rollout_and_html(arts, run_cli, tmp_path):
    rc, stdout, stderr = run_cli(["inspect", arts["rollouts"], "--rollout", "arith-1/r0/s0"])
    assert rc == 0, stderr
    assert "arith-1/r0/s0" in stdout and "‖ thought 1 · incorrect" in stdout and "kept for training" in stdout
    page = tmp_path / "g.html"
    rc, stdout, stderr = run_cli(["inspect", arts["thoughts"], "--problem", "arith-1", "--html", page])
    assert rc == 0, stderr
    assert page.is_file() and page.read_text().count('<section class="col') == 3 and "wrote" in stdout


def test_unknown_rollout_is_a_clear_error(arts):
    from thinkrl.errors import ThinkrlError

    with pytest.raises(ThinkrlError, match="no rollout 'nope' in the rollouts"):
        rollout_view(arts["rollouts"], rollout_id="nope", tokenizer=None)


def test_open_view_missing_policy_falls_back(arts, tmp_path):
    view = open_view(arts["judgments"], rollout_id="arith-1/r0/s2", tokenizer=None)
    assert view.sources["thoughts"] == str(arts["thoughts"])
    assert not view.focus[0].token_level
    assert all(t.label == "correct" for t in view.focus[0].thoughts)


REPLY = "Step 1 <b>wrong</b>: 45 * 3 is 135.\nLABELS: correct, incorrect, incorrect, correct"


def test_html_rationale_reply_logprobs_and_ratio(arts, tmp_path):
    """A hand-built judgments table with a raw reply for s0 only; log pi_old from the train artifact's
    behaviour table (-0.4 for s0's tokens) against the sampler's rollouts.logprobs (-0.5)."""
    j = read_table(arts["judgments"], "judgments").with_columns(
        reply=pl.when(pl.col("rollout_id") == "arith-1/r0/s0").then(pl.lit(REPLY)).otherwise(None))
    write_artifact(tmp_path / "judgments", "judge", {}, {"judgments": j.to_dicts()})
    view = rollout_view(arts["rollouts"], tmp_path / "judgments", arts["thoughts"], problem_id="arith-1",
                        train_dir=arts["train"])
    s0, s1 = view.rollouts[0], view.rollouts[1]
    assert s0.reply == REPLY and s1.reply is None
    assert s0.logprobs == pytest.approx([-0.5] * s0.n_tokens) and s0.old_logprobs == pytest.approx([-0.4] * s0.n_tokens)
    assert s0.ratio(s0.pieces[0]) == pytest.approx(math.exp(0.1))  # exp(log pi_old - log p_sampler)
    assert s1.old_logprobs == pytest.approx([-0.5] * s1.n_tokens) and s1.ratio(s1.pieces[0]) == pytest.approx(1.0)
    page = render_html(view)
    tip = re.search(r'title="([^"]*step 1: incorrect[^"]*)"', page).group(1)
    assert "log p sampler -0.5000 (p 0.607)" in tip and "log π_old trainer -0.4000" in tip
    assert "ratio π_old/p_sampler 1.1052" in tip and "step 1: incorrect (because incorrect)" in tip
    assert '<td class="why">because incorrect</td>' in page and '<td class="why">because matched</td>' in page
    assert page.count("judge's raw reply (") == 1 and "Step 1 &lt;b&gt;wrong&lt;/b&gt;" in page
    assert "behaviour table" in page  # the legend says where log pi_old comes from
    # without the train artifact: the sampler's log-prob only, no ratio
    page = render_html(rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], problem_id="arith-1"))
    assert "log p sampler -0.5000" in page and "π_old trainer" not in page and "ratio π_old" not in page


def test_char_level_pieces_sum_the_logprobs(arts):
    view = rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], rollout_id="arith-1/r0/s0",
                        tokenizer=None, train_dir=arts["train"])
    step1 = next(p for p in view.focus[0].pieces if p.step == 1)
    n = step1.token_end - step1.token_start
    assert step1.logprob == pytest.approx(-0.5 * n) and step1.old_logprob == pytest.approx(-0.4 * n)
    assert "(sum)" in render_html(view)


def _browser() -> str | None:
    names = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")
    return next((shutil.which(b) for b in names if shutil.which(b)), None)


PROBE = """<script>
const d = document.documentElement, wide = [...document.querySelectorAll("*")].filter(
  el => el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== "visible");
document.body.setAttribute("data-probe", [d.scrollWidth, d.clientWidth, wide.length].join(" "));
</script></body>"""


@pytest.mark.skipif(_browser() is None, reason="no headless Chromium here (chromium-headless-shell or chromium)")
def test_group_of_8_needs_no_horizontal_scroll_at_1280(arts, tmp_path):
    """The page in a real browser at 1280x800: neither the page nor any scrolling box inside it is wider than
    its window (G = 8 rollouts, one with a 300-digit token that cannot break at a space)."""
    view = rollout_view(arts["rollouts"], arts["judgments"], arts["thoughts"], problem_id="arith-1",
                        train_dir=arts["train"])
    rvs = [replace(view.rollouts[i % 3], rollout_id=f"arith-1/r0/s{i}", sample_idx=i) for i in range(8)]
    rvs[7] = replace(rvs[7], pieces=[replace(rvs[7].pieces[0], text="9" * 300), *rvs[7].pieces[1:]])
    page = render_html(replace(view, rollouts=rvs)).replace("</body>", PROBE)
    (tmp_path / "g.html").write_text(page, encoding="utf-8")
    dom = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                          "--dump-dom", (tmp_path / "g.html").as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    scroll, client, wide = map(int, re.search(r'data-probe="(\d+) (\d+) (\d+)"', dom).groups())
    assert 1200 <= client <= 1280 and scroll <= client and wide == 0
