"""thinkrl.summary, thinkrl.plots and thinkrl.report: run summaries from real artifacts of fake runs, comparison
numbers checked by hand, report.md, PNGs, figure titles/labels/legends, multi-seed aggregation, runs in progress."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thinkrl.artifacts import write_artifact
from thinkrl.plots import (
    FIGURES,
    accuracy_figure,
    align,
    curves_figure,
    incorrect_thoughts_figure,
    length_figure,
)
from thinkrl.report import aggregate_by_group, comparison_table, markdown_table, write_report
from thinkrl.summary import collect_run, seed_groups

PROBLEMS, G = 4, 4  # 16 rollouts per round


def _rollouts(d: Path, rnd: int, acc: float, tokens: int) -> None:
    rows = []
    for p in range(PROBLEMS):
        for j in range(G):
            ok = p * G + j < round(acc * PROBLEMS * G)
            rows.append({"rollout_id": f"p{p}/r{rnd}/s{j}", "problem_id": f"p{p}", "question": "q", "sample_idx": j,
                         "round": rnd, "policy": "pol", "template": "raw", "prompt": "q", "completion": "x",
                         "prompt_ids": [1], "completion_ids": [5] * tokens, "logprobs": [-0.1] * tokens,
                         "finish_reason": "stop", "answer": "1", "pred_answer": "1" if ok else "2", "correct": ok,
                         "seed": 0})
    write_artifact(d, "sample", {"seed": 0, "round": rnd}, {"rollouts": rows},
                   metrics={"rollouts": len(rows), "accuracy": acc, "mean_tokens": float(tokens)})


def _judgments(d: Path, rnd: int, bad_tokens: int, tokens: int) -> None:
    rows = []
    for p in range(PROBLEMS):
        for j in range(G):
            rid = f"p{p}/r{rnd}/s{j}"
            rows.append({"rollout_id": rid, "step_idx": 0, "char_start": 0, "char_end": 1, "token_start": 0,
                         "token_end": tokens - bad_tokens, "text": "x", "label": "correct", "judge": "rule",
                         "rationale": ""})
            if p == 0 and j == 0:  # one rollout of the round holds an incorrect step of `bad_tokens` tokens
                rows.append({"rollout_id": rid, "step_idx": 1, "char_start": 0, "char_end": 1,
                             "token_start": tokens - bad_tokens, "token_end": tokens, "text": "x",
                             "label": "incorrect", "judge": "rule", "rationale": "wait"})
    write_artifact(d, "judge", {}, {"judgments": rows})


def _thoughts(d: Path, scheme: str, dropped: int, share: float) -> None:
    write_artifact(d, "segment", {"scheme": scheme, "alpha": 1.0},
                   {"thoughts": [{"rollout_id": "p0/r0/s0", "thought_idx": 0, "token_start": 0, "token_end": 2,
                                  "char_start": 0, "char_end": 2, "text": "ab", "label": "correct",
                                  "reward": 1.0}],
                    "advantages": [{"rollout_id": "p0/r0/s0", "problem_id": "p0", "prompt_ids": [1],
                                    "completion_ids": [5, 5], "advantages": [1.0, 1.0],
                                    "behaviour_logprobs": [-0.1, -0.1], "outcome_advantage": 1.0, "correct": True,
                                    "round": 0, "temperature": 1.0, "max_tokens": 8, "finish_reason": "stop",
                                    "incorrect_tokens": 0}]},
                   metrics={"scheme": scheme, "dropped_rollouts": dropped, "kept_rollouts": 16 - dropped,
                            "error_thoughts": 1, "flipped_error_thoughts": 1,
                            "incorrect_thought_token_share": share if scheme != "outcome" else 0.0})


def _train(d: Path, losses: list[float], first_step: int = 1, rnd: int = 0) -> None:
    rows = [{"step": first_step + i, "round": rnd, "loss": v, "kl": 0.0, "clip_frac": 0.1, "ratio_mean": 1.0,
             "grad_norm": 1.0, "lr": 1e-4, "tokens": 100, "dropped_rollouts": 2, "skipped": False, "seconds": 0.5,
             "mfu": 0.01, "reward_mean": 0.5, "reward_std": 0.5, "accuracy": 0.5, "response_len_mean": 10.0,
             "response_len_max": 12, "truncation_rate": 0.0, "adv_mean": 0.0, "adv_std": 1.0, "adv_min": -1.0,
             "adv_max": 1.0, "incorrect_thought_share": 0.1, "entropy": 1.0, "tokens_per_s": 200.0}
            for i, v in enumerate(losses)]
    rows.append({**rows[-1], "step": first_step + len(rows), "loss": float("nan"), "skipped": True})  # not averaged
    write_artifact(d, "train", {}, {"train_metrics": rows})


def _eval(d: Path, acc: float, policy: str, tokens: float = 12.0) -> None:
    write_artifact(d, "eval", {"policy": policy, "k": 4},
                   {"eval_samples": [{"benchmark": "arith-heldout", "problem_id": "h0", "sample_idx": 0,
                                      "prompt": "q", "answer": "1", "completion": "x", "pred_answer": "1",
                                      "correct": True, "tokens": 3, "finish_reason": "stop"}],
                    "eval_summary": [{"benchmark": "arith-heldout", "problems": 50, "k": 4, "avg_at_k": acc,
                                      "pass_at_k": min(1.0, acc + 0.2), "maj_at_k": acc + 0.05,
                                      "mean_tokens": tokens, "truncation_rate": 0.0}]})


def make_run(root: Path, name: str, scheme: str, seed: int, evals: list[float], lengths: list[int],
             rounds_done: int = 3, rounds_started: int | None = None, lr: float = 1e-4, extra: str = "") -> Path:
    """A run as `thinkrl run` lays it out: eval-initial + rounds 0..rounds_started-1, the first `rounds_done`
    of them complete (with an eval after each), the next one with its rollouts only."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f'name = "{name}"\nscheme = "{scheme}"\nseed = {seed}\nrounds = 3\n{extra}'
                                     f'[train]\nlr = {lr}\n')
    _eval(run / "eval-initial", evals[0], "data/tiny-policy")
    for r in range(rounds_started if rounds_started is not None else rounds_done):
        rd = run / f"round-{r:03d}"
        _rollouts(rd / "rollouts", r, acc=0.25 + 0.125 * r, tokens=lengths[r])
        if r >= rounds_done:
            continue
        if scheme != "outcome" or r == 0:  # GRPO judged only in round 0 (for measurement)
            _judgments(rd / "judgments", r, bad_tokens=4 - r, tokens=lengths[r])
        _thoughts(rd / "thoughts", scheme, dropped=r, share=0.05)
        _train(rd / "train", [0.5 - 0.1 * r, 0.3 - 0.1 * r], first_step=1 + 3 * r, rnd=r)
        _eval(rd / "eval", evals[r + 1], f"{run}/round-{r:03d}/train/policy")
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "grpo": make_run(root, "grpo-s0", "outcome", 0, [0.30, 0.34, 0.38, 0.40], [20, 24, 28]),
        "tp": make_run(root, "tp-s0", "thought", 0, [0.30, 0.41, 0.43, 0.45], [20, 18, 16]),
        "grpo1": make_run(root, "grpo-s1", "outcome", 1, [0.32, 0.36, 0.38, 0.42], [20, 22, 26]),
        "tp1": make_run(root, "tp-s1", "thought", 1, [0.31, 0.38, 0.44], [20, 19, 17], rounds_done=2,
                        rounds_started=3),
    }


def test_collect_run_numbers(runs):
    s = collect_run(runs["tp"])
    assert (s.name, s.scheme, s.seed, s.expected_rounds) == ("tp-s0", "thought", 0, 3)
    assert [r.samples_consumed for r in s.rounds] == [16, 32, 48]
    assert [r.accuracy for r in s.rounds] == [0.25, 0.375, 0.5]
    assert [r.mean_tokens for r in s.rounds] == [20, 18, 16]
    assert [r.dropped_rollouts for r in s.rounds] == [0, 1, 2]
    # one rollout per round has an incorrect step of 4-r tokens; all 16 rollouts have `length` tokens
    assert s.rounds[0].incorrect_share == pytest.approx(4 / (16 * 20))
    assert s.rounds[2].incorrect_share == pytest.approx(2 / (16 * 16))
    assert s.rounds[0].incorrect_share_source == "judgments"
    assert s.rounds[1].mean_loss == pytest.approx(0.3)  # (0.4 + 0.2) / 2, the skipped NaN step left out
    assert s.rounds[1].train_steps == 3 and s.rounds[1].clip_frac == pytest.approx(0.1)
    assert s.rounds[1].seconds_per_step == pytest.approx(0.5) and s.rounds[1].mfu == pytest.approx(0.01)
    assert [(e.where, e.samples_consumed) for e in s.evals] == [
        ("eval-initial", 0), ("round-000/eval", 16), ("round-001/eval", 32), ("round-002/eval", 48)]
    assert s.final_accuracy == 0.45 and s.best_accuracy == 0.45
    assert s.evals[1].k == 4 and s.evals[1].pass_at_k == pytest.approx(0.61)
    assert s.missing == [] and s.status == "complete"


def test_outcome_scheme_share_only_where_judged(runs):
    s = collect_run(runs["grpo"])
    assert s.rounds[0].incorrect_share == pytest.approx(4 / (16 * 20))  # judged for measurement
    assert s.rounds[1].incorrect_share is None                            # not judged: unknown, not 0
    assert s.rounds[1].incorrect_thought_token_share is None              # outcome makes no thoughts
    assert s.missing == []                                                # GRPO needs no judge


def test_run_in_progress_says_what_is_missing(runs):
    s = collect_run(runs["tp1"])
    assert [r.samples_consumed for r in s.rounds] == [16, 32, 48]
    assert not s.rounds[2].complete and s.rounds[1].complete
    assert any("round-002/judgments: not finished" in m for m in s.missing)
    assert any("round-002/train: not finished" in m for m in s.missing)
    assert [e.samples_consumed for e in s.evals] == [0, 16, 32]
    assert s.samples_consumed == 32  # round 2 sampled but not trained on yet
    assert s.status.startswith("in progress")


def test_comparison_and_samples_to_reach(runs):
    s = [collect_run(runs[k]) for k in ("grpo", "tp")]
    rows = comparison_table(s)
    base, tp = rows
    assert base["final_acc"] == 0.40 and base["samples_to_baseline"] == 48  # reached 40% only at the end
    assert tp["samples_to_baseline"] == 16                                  # 41% after round 0
    assert tp["fewer_samples"] == pytest.approx(3.0)
    assert tp["mean_length"] == 16 and base["mean_length"] == 28
    assert base["incorrect_share"] is None  # judged in round 0 only: no stale value for its last round
    assert tp["incorrect_share"] == pytest.approx(2 / 256)
    md = markdown_table(rows)
    assert "| run |" in md and "40.0%" in md and "3.00x" in md and "48" in md


def test_aggregate_by_group(runs):
    s = [collect_run(runs[k]) for k in ("grpo", "tp", "grpo1", "tp1")]
    agg = {r["scheme"]: r for r in aggregate_by_group(s)}
    assert list(agg) == ["outcome", "thought"]
    assert agg["outcome"]["final_acc"].mean == pytest.approx(0.41)
    assert agg["outcome"]["final_acc"].std == pytest.approx(0.01414, abs=1e-4)
    # target 41%: grpo-s0 never (40%), grpo-s1 at 48; tp-s0 at 16 (41%), tp-s1 at 32 (44%)
    assert (agg["outcome"]["samples_to_baseline"].mean, agg["outcome"]["samples_to_baseline"].n) == (48, 1)
    assert agg["thought"]["samples_to_baseline"].mean == 24 and agg["thought"]["seeds"] == [0, 1]
    # 95% t-interval of 2 seeds: t_0.975,1 = 12.706 times 0.01414 / sqrt(2) = 12.7 points
    assert agg["outcome"]["final_acc"].ci == pytest.approx(12.7062 * 0.0141421 / 2 ** 0.5, rel=1e-4)
    md = markdown_table(list(agg.values()))
    assert "41.0% ± 12.7%" in md and "48 (1/2)" in md and "±" not in md.splitlines()[2].split("|")[6]


def test_figures_have_title_labels_legend(runs):
    s = [collect_run(runs[k]) for k in ("grpo", "tp", "grpo1", "tp1")]
    for make in (accuracy_figure, length_figure, incorrect_thoughts_figure):
        ax = make(s).axes[0]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        assert "(" in ax.get_ylabel()  # a unit
        assert ax.get_legend() is not None
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("outcome" in x and "2 seeds" in x for x in labels), labels
    ax = accuracy_figure(s[:2]).axes[0]  # one seed per scheme: one line per run, plus the baseline line
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["grpo-s0 · outcome", "tp-s0 · thought"] and "baseline" in labels[2]
    assert "samples" in ax.get_xlabel() and "%" in ax.get_ylabel()
    line = ax.get_lines()[1]
    assert list(line.get_xdata()) == [0, 16, 32, 48] and list(line.get_ydata()) == pytest.approx([30, 41, 43, 45])


def test_write_report(runs, tmp_path):
    path = write_report([runs["grpo"], runs["tp"], runs["tp1"]], tmp_path / "rep", title="GRPO vs TP")
    text = path.read_text()
    assert text.startswith("# GRPO vs TP")
    assert "curves.png" in FIGURES and "![training curves per optimizer step" in text
    for name in FIGURES:
        assert f"]({name})" in text  # relative path
        png = tmp_path / "rep" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 15_000
    assert "## Comparison" in text and "## By scheme" in text and "### tp-s1" in text
    assert "round-002/train: not finished" in text
    assert "| round |" in text and "| eval |" in text


def test_report_stage_function(runs, tmp_path, capsys):
    from stages.report import report

    report([runs["grpo"], runs["tp"]], out_dir=tmp_path / "r", title="t")
    assert (tmp_path / "r" / "report.md").is_file()
    assert "report:" in capsys.readouterr().out


def test_one_seed_per_scheme_says_what_it_cannot_show(runs, seeds, tmp_path):
    """grpo and tp, one seed each: the report and the printed table say one seed shows no winner and point to the
    powered protocol; three seeds of one scheme beside one seed of another still do; one scheme alone does not."""
    from thinkrl.report import POWERED, seed_caveat

    text = write_report([runs["grpo"], runs["tp"]], tmp_path / "one").read_text()
    assert "One seed per scheme" in text and "not which scheme is better" in text and POWERED in text
    s = {k: collect_run(v) for k, v in seeds.items()}
    assert seed_caveat([s["s0"], s["s1"], s["s2"]]) is None                       # one scheme, three seeds
    assert seed_caveat([s["s0"], s["s1"], s["s2"], collect_run(runs["grpo"])]) is not None


def test_not_a_run(tmp_path):
    from thinkrl.errors import ThinkrlError

    with pytest.raises(ThinkrlError, match="not a run directory"):
        collect_run(tmp_path)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    """Three seeds of one config (final accuracy 40%, 42%, 47%; seed 2 on 4 threads: no number changes), the
    same scheme at another lr, and a copy of seed 0 (a repeated seed)."""
    root = tmp_path_factory.mktemp("seeds")
    finals = (0.40, 0.42, 0.47)
    made = {f"s{k}": make_run(root, f"tp-s{k}", "thought", k, [0.30, 0.35, 0.38, f], [20, 18, 16],
                              extra="threads = 4\n" if k == 2 else "")
            for k, f in enumerate(finals)}
    made["lr"] = make_run(root, "tp-lr3", "thought", 0, [0.30, 0.31, 0.32, 0.33], [20, 20, 20], lr=3e-4)
    made["copy"] = make_run(root / "copy", "tp-s0", "thought", 0, [0.30, 0.35, 0.38, 0.40], [20, 18, 16])
    return made


def test_seed_groups_configs_differing_only_in_seed(seeds):
    s = {k: collect_run(v) for k, v in seeds.items()}
    groups = seed_groups([s["s0"], s["s1"], s["lr"], s["s2"]])
    assert [(label, [r.seed for r in runs]) for label, runs in groups] == [
        ("thought (train.lr=0.0001)", [0, 1, 2]), ("thought (train.lr=0.0003)", [0])]
    assert [label for label, _ in seed_groups([s["s0"], s["s1"]])] == ["thought"]  # one group: the scheme alone
    # a repeated seed (the same run twice): not averaged, each run on its own
    groups = seed_groups([s["s0"], s["copy"], s["s1"]])
    assert [[r.path for r in runs] for _, runs in groups] == [[str(seeds["s0"])], [str(seeds["copy"])],
                                                             [str(seeds["s1"])]]


def test_three_seeds_interval_in_table_and_band(seeds, tmp_path):
    s = [collect_run(seeds[k]) for k in ("s0", "s1", "s2")]
    (row,) = aggregate_by_group(s)
    assert row["seeds"] == [0, 1, 2] and row["final_acc"].mean == pytest.approx(0.43)
    assert row["final_acc"].ci == pytest.approx(0.0895669, abs=1e-7)  # tests/test_intervals.py, by hand
    assert "43.0% ± 9.0%" in markdown_table([row])
    text = write_report(s, tmp_path / "rep").read_text()
    assert "## By scheme (mean ± 95% interval over seeds)" in text and "43.0% ± 9.0%" in text
    # the band at the last eval point (48 samples) spans mean ± half-width; seeds share x: nothing interpolated
    ax = accuracy_figure(s).axes[0]
    band = ax.collections[0].get_paths()[0].vertices
    at48 = sorted({round(float(y), 6) for x, y in band if x == 48})
    assert at48 == pytest.approx([43 - 8.95669, 43 + 8.95669], abs=1e-4)
    mean_line = next(ln for ln in ax.get_lines() if "mean of 3 seeds" in ln.get_label())
    assert list(mean_line.get_xdata()) == [0, 16, 32, 48] and mean_line.get_ydata()[-1] == pytest.approx(43)
    assert "95% t-interval" in mean_line.get_label()


def test_align_interpolates_onto_the_common_range():
    a = (np.array([0.0, 10.0, 20.0]), np.array([0.0, 10.0, 20.0]))
    b = (np.array([0.0, 5.0, 15.0]), np.array([1.0, 2.0, 4.0]))
    grid, values = align([a, b])
    assert list(grid) == [0, 5, 10, 15]  # the union inside [0, 15]: no extrapolation past b's last point
    assert values.tolist() == [[0, 5, 10, 15], [1, 2, 3, 4]]  # b at 10: halfway between 2 and 4
    grid, values = align([a, (np.array([30.0]), np.array([1.0]))])
    assert grid.size == 0  # ranges do not overlap: no mean


def test_per_step_figures_from_train_metrics(runs):
    s = collect_run(runs["tp"])
    # rounds 0..2 each log steps 3r+1, 3r+2 (losses 0.5-0.1r, 0.3-0.1r) and a skipped NaN step 3r+3
    assert s.steps["step"] == [1, 2, 4, 5, 7, 8]
    assert s.steps["loss"] == pytest.approx([0.5, 0.3, 0.4, 0.2, 0.3, 0.1])
    assert "skipped" not in s.steps and "steps" not in s.to_dict()


def test_curves_figure_panels_follow_the_columns(runs):
    s = [collect_run(runs[k]) for k in ("grpo", "tp", "grpo1")]
    assert curves_figure(s).axes[4].get_title() == "Outcome reward of the step's rollouts"  # today's train_metrics
    for r in s:  # a trainer that did not log reward and length (an older train_metrics): those panels are left out
        r.steps = {k: v for k, v in r.steps.items() if k not in ("reward_mean", "response_len_mean")}
    fig = curves_figure(s)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Loss", "KL to the reference (k3)", "Clipped tokens", "Gradient norm before clipping"]
    assert all(ax.get_xlabel() == "optimizer step (global)" and ax.get_ylabel() for ax in fig.axes)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["outcome: mean of 2 seeds (band: 95% t-interval)", "tp-s0 · thought"]
    # a trainer that logs reward and response length (train_metrics columns reward_mean, response_len_mean)
    tp = s[1]
    tp.steps = {**tp.steps, "reward_mean": [0.25, 0.5, None, 0.5, 0.75, 1.0],
                "response_len_mean": [20.0, 19.0, 18.0, 18.0, 16.0, 15.0]}
    fig = curves_figure([tp])
    assert [ax.get_title() for ax in fig.axes][4:] == ["Outcome reward of the step's rollouts",
                                                       "Response length of the step's rollouts"]
    reward = fig.axes[4].get_lines()[0]
    assert list(reward.get_xdata()) == [1, 2, 5, 7, 8] and list(reward.get_ydata()) == [0.25, 0.5, 0.5, 0.75, 1.0]
    assert list(fig.axes[5].get_lines()[0].get_ydata()) == [20, 19, 18, 18, 16, 15]
