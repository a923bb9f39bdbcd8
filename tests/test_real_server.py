"""The `openai:` judge backend against a REAL model server: `transformers serve` (an OpenAI-compatible
FastAPI server from transformers) on 127.0.0.1, serving a local model directory. Slow: run by
`just test-slow`. Needs the `serve` extra (fastapi, uvicorn, openai); skips with the reason otherwise."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from thinkrl.artifacts import ArtifactWriter, read_table
from thinkrl.judge import make_judge
from thinkrl.judge.judging import judge_rollouts
from thinkrl.tasks.arith import generate_problems, make_corpus

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    missing = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
    cli = Path(sys.executable).parent / "transformers"
    if missing or not cli.exists():
        pytest.skip(f"transformers serve needs the serve extra (missing: {missing or 'transformers CLI'})")
    from thinkrl.models import init_model
    from thinkrl.warmstart import WarmstartConfig, warmstart

    root = tmp_path_factory.mktemp("m")
    # a few warm-start steps, so greedy replies are text (a random model's argmax is often EOS: empty replies)
    model_dir = warmstart(init_model("tiny", root / "init", seed=0), root / "tiny",
                          WarmstartConfig(steps=80, corpus_size=2000))
    port = _free_port()
    proc = subprocess.Popen([str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"transformers serve exited: {proc.stderr.read()[-2000:]}")
                time.sleep(1)
        else:
            pytest.fail("transformers serve did not become healthy in 120 s")
        yield url, str(model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_openai_judge_talks_to_a_real_model_server(server, tmp_path):
    from thinkrl.tokenizer import build_tokenizer

    url, model = server
    tok = build_tokenizer([e.solution_text for e in make_corpus(200, 0)])
    rows = []
    for p, ex in zip(generate_problems(3, 5), make_corpus(3, 6), strict=True):
        rows.append({"rollout_id": f"{p.problem_id}/r0/s0", "problem_id": p.problem_id, "question": p.question,
                     "completion": ex.solution_text, "completion_ids": tok.encode(ex.solution_text),
                     "correct": ex.is_correct, "pred_answer": "1", "answer": str(p.answer)})
    ro = pl.DataFrame(rows)
    judge = make_judge(f"openai:{url}", model=model, max_tokens=24, cache_dir=str(tmp_path / "cache"),
                       timeout_s=300, retries=1, concurrency=2)
    # a tiny model cannot follow the protocol: its replies are no verdict, so the run finishes only with
    # --allow-failed (without it the judgments stay unfinished: tests/test_judge.py)
    m = judge_rollouts(ro, judge, tok, ArtifactWriter(tmp_path / "j", "judge", {}), allow_failed=True)
    df = read_table(tmp_path / "j", "judgments")
    assert set(df["rollout_id"]) == set(ro["rollout_id"])
    stats = judge.backend.stats
    assert set(stats["failures"]) <= {"unusable reply"} and stats["requests"] >= 3, stats  # no transport failure
    assert df["reply"].null_count() == 0                              # every request got a real reply
    assert m["judge_tokens_per_rollout"] > 0                          # usage came back from the server
    assert set(df["label"]) <= {"correct", "incorrect", "matched", "unmatched", "unknown"}  # never a crash
