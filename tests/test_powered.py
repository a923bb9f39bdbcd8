"""Protocol P1 as code (thinkrl/powered.py): the runs are the protocol's, paired, in its order; its target rule
and verdicts by hand."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from thinkrl.powered import ARMS, EVAL_SEED, REGIMES, SEEDS, analyse_regime, p1_runs, target_for, verdict
from thinkrl.summary import EvalPoint, RunSummary


def test_runs_are_the_protocols_and_paired():
    runs = p1_runs("runs/start", {"B": ("runs/b-train", "runs/b-eval")})
    assert len(runs) == 60 == len({r.name for r in runs})                      # 42 in A, 18 in B
    assert sum(r.regime == "A" for r in runs) == 42
    assert [r.arm for r in runs[:4]] == ["grpo", "tp", "grpo", "tp"]            # the primary question first
    priorities = [next(a.priority for a in ARMS if a.name == r.arm) for r in runs]
    assert priorities == sorted(priorities)
    for regime in REGIMES:
        for seed in SEEDS:
            same = [asdict(r.cfg) for r in runs if r.regime == regime and r.seed == seed]
            for d in same:  # within a seed the arms differ in scheme and judge only
                assert {k: v for k, v in d.items() if k not in ("scheme", "judge")} == {
                    k: v for k, v in same[0].items() if k not in ("scheme", "judge")}
    assert {r.cfg.eval_seed for r in runs} == {EVAL_SEED}                     # one eval seed for every run
    b = next(r.cfg for r in runs if r.regime == "B")
    assert (b.problems, b.eval_bench, b.max_tokens) == ("runs/b-train", "runs/b-eval", 224)
    assert next(r.cfg for r in runs if r.arm == "tp-noisy30").judge == "noisy:0.3"


def summary(seed: int, points: list[tuple[int, float]]) -> RunSummary:
    evals = [EvalPoint(where="eval-initial" if s == 0 else f"round-{i:03d}", trained_rounds=i, samples_consumed=s,
                       avg_at_k=a, pass_at_k=a, maj_at_k=a, mean_tokens=40.0, k=4, problems=500, benchmarks={})
             for i, (s, a) in enumerate(points)]
    return RunSummary(name=f"s{seed}", path="", scheme="", seed=seed, rounds=[], evals=evals, expected_rounds=2,
                      config={}, missing=[])


def test_target_rule_by_hand():
    # start 0.40: target 0.55; 4 of 6 grpo runs reach it -> kept; 3 -> the fallback 0.475
    reach, miss = [(0, 0.40), (800, 0.56)], [(0, 0.40), (800, 0.50)]
    assert target_for(0.40, [summary(s, reach) for s in range(4)] + [summary(s, miss) for s in (4, 5)]) == (
        pytest.approx(0.55), False)
    assert target_for(0.40, [summary(s, reach) for s in range(3)] + [summary(s, miss) for s in (3, 4, 5)]) == (
        pytest.approx(0.475), True)


def test_verdicts_by_hand():
    assert verdict(1.1, 2.0, 1.0) == "supported"
    assert verdict(0.5, 0.9, 1.0) == "contradicted"
    assert verdict(0.9, 1.8, 1.0) == "not shown"          # the protocol's example: 1.3x in (0.9, 1.8)


def test_analysis_answers_h1_from_paired_runs():
    """tp reaches 0.55 at 400 samples in every seed, grpo at 800: 2x fewer, a zero-width paired interval."""
    grpo = [summary(s, [(0, 0.40), (800, 0.55), (1600, 0.60)]) for s in SEEDS]
    tp = [summary(s, [(0, 0.40), (800, 0.70), (1600, 0.72)]) for s in SEEDS]
    out = analyse_regime({"grpo": grpo, "tp": tp}, "A")
    assert out["target"] == pytest.approx(0.55) and not out["fallback_target"]
    assert out["hypotheses"]["H1"] == "supported"
    r = out["arms"]["tp"]["samples_to_target"]["fewer_samples"]
    assert (r.estimate, r.low, r.high) == pytest.approx((2.0, 2.0, 2.0))     # 800 / 400 in every seed


def test_h4_orders_the_judges_by_hand():
    """AUC over grpo falls with the judge: oracle +0.10, rule +0.06, noisy 10% +0.03, noisy 30% +0.00 in every seed
    (zero-width paired intervals): supported; the noisy 30% arm above the oracle: contradicted."""
    def runs(final):
        return [summary(s, [(0, 0.40), (800, final)]) for s in SEEDS]

    arms = {"grpo": runs(0.50), "tp-oracle": runs(0.70), "tp": runs(0.62), "tp-noisy10": runs(0.56),
            "tp-noisy30": runs(0.50)}
    assert analyse_regime(arms, "A")["hypotheses"]["H4"] == "supported"
    arms["tp-noisy10"] = runs(0.66)                        # above the rule judge: out of order
    assert analyse_regime(arms, "A")["hypotheses"]["H4"] == "not shown"
    arms["tp-noisy30"] = runs(0.72)
    assert analyse_regime(arms, "A")["hypotheses"]["H4"] == "contradicted"


def test_a_record_round_trips_its_summary():
    """A run's summary kept as a record (plain JSON) comes back equal: rounds, eval points and their benchmarks."""
    import json

    from thinkrl.powered import record_summary
    from thinkrl.summary import RoundSummary

    s = summary(3, [(0, 0.40), (800, 0.55)])
    s.rounds = [RoundSummary(round=0, rollouts=800, samples_consumed=800, accuracy=0.5, train_steps=20,
                             missing=["x"])]
    s.evals[1].benchmarks = {"arith": {"avg_at_k": 0.55, "problems": 500}}
    s.steps = {"loss": [0.5, None, 0.25]}
    back = record_summary({"summary": json.loads(json.dumps({**s.to_dict(), "steps": s.steps}))})
    assert back == s and back.steps == s.steps and back.samples_consumed == 800 and back.evals[1].benchmarks["arith"]["problems"] == 500


def test_mechanism_table_by_hand():
    """Per arm: the mean over runs of each run's mean over rounds (a round without thoughts counts as 0 changed),
    and round 0 and the last round's behaviour averaged over runs."""
    from thinkrl.powered import mechanism_table

    def rec(arm, shares, behaviour):
        return {"arm": arm, "mechanism": [{"round": i, "shares": sh, "behaviour": b}
                                          for i, (sh, b) in enumerate(zip(shares, behaviour, strict=True))]}

    b = lambda r, e, t: {"reflection_rate": r, "step_error_rate": e, "mean_tokens": t}  # noqa: E731
    sh = lambda c, e, u: {"share_changed": c, "share_changed_error": e, "share_changed_unmatched": u}  # noqa: E731
    t = mechanism_table([
        rec("tp", [sh(0.2, 0.05, 0.15), sh(0.4, 0.1, 0.3)], [b(0.2, 0.3, 40), b(0.1, 0.2, 50)]),
        rec("tp", [sh(0.1, 0.0, 0.1), None], [b(0.4, 0.5, 60), b(0.3, 0.1, 30)]),
        rec("grpo", [None, None], [b(0.2, 0.3, 40), b(0.2, 0.3, 40)]),
    ])
    assert t["tp"]["runs"] == 2
    assert t["tp"]["share_changed"] == pytest.approx((0.3 + 0.05) / 2)           # run means 0.3 and 0.05
    assert t["tp"]["share_changed_error"] == pytest.approx((0.075 + 0.0) / 2)
    assert t["tp"]["share_changed_unmatched"] == pytest.approx((0.225 + 0.05) / 2)
    assert t["tp"]["reflection_rate_first"] == pytest.approx(0.3)
    assert t["tp"]["step_error_rate_last"] == pytest.approx(0.15)
    assert t["tp"]["mean_tokens_last"] == pytest.approx(40)
    assert t["grpo"]["share_changed"] == 0.0


def test_kept_records_pair_only_over_their_start_policy(tmp_path):
    """Records kept from an earlier checkout come back when their start policy's weights are this one's; a record
    from other weights (a rebuilt warm start) is set aside and counted, and a run with no record is absent."""
    import json

    from thinkrl.powered import powered_records, start_fingerprint

    start, other = tmp_path / "start", tmp_path / "other"
    for d, b in ((start, b"weights"), (other, b"weights, rebuilt")):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b)
        (d / "thinkrl.json").write_text("{}")
    assert start_fingerprint(start) != start_fingerprint(other)
    fp = start_fingerprint(start)
    (start / "thinkrl.json").write_text('{"written": "later"}')          # only the weights count
    runs = p1_runs(start, seeds=(0,))
    kept = tmp_path / "kept"
    kept.mkdir()
    for r, tag in zip(runs[:3], (fp, start_fingerprint(other), None), strict=True):
        (kept / f"{r.name}.json").write_text(json.dumps({"name": r.name, "start_policy": tag}))
    records, set_aside = powered_records(runs, tmp_path / "no-runs", kept, start)
    assert list(records) == [runs[0].name] and set_aside == 2


def test_an_arm_with_one_seed_waits():
    """An arm with one finished seed is not compared (a paired interval needs two) but listed as waiting; the
    other arms' analysis goes on."""
    grpo = [summary(s, [(0, 0.40), (800, 0.55)]) for s in SEEDS]
    out = analyse_regime({"grpo": grpo, "tp": [summary(s, [(0, 0.40), (800, 0.60)]) for s in SEEDS],
                          "tp-oracle": [summary(0, [(0, 0.40), (800, 0.70)])],
                          "tp-static": [summary(1, [(0, 0.40), (800, 0.70)])]}, "A")
    assert out["waiting"] == {"tp-oracle": 1, "tp-static": 1} and set(out["arms"]) == {"tp"}
    assert "H1" in out["hypotheses"] and "H2" not in out["hypotheses"]
