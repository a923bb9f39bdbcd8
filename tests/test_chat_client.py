"""Tests for thinkrl.judge.chat against a real local HTTP server with injected faults (tests/fault_server.py).

Run: .venv/bin/python -m pytest tests/test_chat_client.py -q
Only 127.0.0.1 is contacted; timeouts and backoffs are tiny so the file runs in a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fault_server import FaultServer, expected_reply

from thinkrl.errors import ThinkrlError
from thinkrl.judge.chat import ChatClient, ChatConfig

pytestmark = pytest.mark.timeout(60)

NO_KEY_ENV = "THINKRL_TEST_CHAT_NO_KEY"
SECRET = "sk-test-S3CRET-0123456789abcdef"


@pytest.fixture
def server():
    with FaultServer(slow_s=1.5) as srv:
        yield srv


def make_cfg(srv: FaultServer, **kw) -> ChatConfig:
    base = dict(base_url=srv.url, model="judge-test", api_key_env=NO_KEY_ENV, max_concurrency=4,
                timeout_s=0.4, max_retries=2, backoff_s=0.01)
    return ChatConfig(**{**base, **kw})


def convs(n: int, prefix: str = "question") -> list[list[dict]]:
    return [[{"role": "system", "content": "judge"}, {"role": "user", "content": f"{prefix} {i}"}]
            for i in range(n)]


def test_all_good_batch_in_order(server):
    server.delay_s = 0.01
    conversations = convs(30)
    seen = []
    with ChatClient(make_cfg(server)) as client:
        results = client.complete_many(conversations, progress=seen.append)
        stats = client.stats
    assert [r.text for r in results] == [expected_reply(c) for c in conversations]
    assert all(r.error is None and r.attempts == 1 and not r.cached for r in results)
    assert all(r.finish_reason == "stop" for r in results)
    assert all(r.completion_tokens == 7 and r.prompt_tokens > 0 for r in results)
    assert seen == list(range(1, 31))
    assert len(server.records) == 30
    assert {r.path for r in server.records} == {"/v1/chat/completions"}
    body = server.records[0].body
    assert body["model"] == "judge-test" and body["temperature"] == 0.0 and body["max_tokens"] == 2048
    assert stats["requests"] == 30 and stats["retries"] == 0 and stats["failures"] == {}
    assert stats["completion_tokens"] == 210 and stats["conversations"] == 30


def test_transient_faults_recovered_and_permanent_one_fails(server):
    transient = {"500": ["500", "500"], "502": ["502"], "503": ["503"], "429": ["429"], "slow": ["slow"],
                 "garbage": ["garbage"], "truncated": ["truncated"], "no_choices": ["no_choices"],
                 "empty": ["empty"], "close": ["close"], "mixed": ["garbage", "truncated"]}
    conversations = convs(12, "plain")
    for name, faults in transient.items():
        conversations.insert(len(conversations) // 2, [{"role": "user", "content": f"fault {name}"}])
        server.script(f"fault {name}", faults)
    conversations.insert(3, [{"role": "user", "content": "doomed"}])
    server.script("doomed", [], then="500")

    with ChatClient(make_cfg(server)) as client:
        results = client.complete_many(conversations)
        stats = client.stats
    assert len(results) == len(conversations)
    for conv, res in zip(conversations, results, strict=True):
        content = conv[-1]["content"]
        if content == "doomed":
            assert res.text is None and res.error == "http 500 after 3 attempts" and res.attempts == 3
            continue
        assert res.text == expected_reply(conv), (content, res)
        assert res.error is None
        name = content.removeprefix("fault ")
        assert res.attempts == 1 + len(transient.get(name, [])), (content, res)
        assert len(server.for_content(content)) == res.attempts
    assert stats["failures"] == {"http 500": 1}
    assert stats["retries"] == sum(map(len, transient.values())) + 2
    assert stats["retry_reasons"] == {"http 500": 4, "http 502": 1, "http 503": 1, "http 429": 1,
                                      "timeout": 1, "bad json": 2, "truncated body": 2, "no choices": 1,
                                      "empty content": 1, "connection error": 1}


def test_permanent_failures_name_their_reason(server):
    kinds = {"500": "http 500", "429": "http 429", "slow": "timeout", "trickle": "timeout",
             "garbage": "bad json", "truncated": "truncated body", "no_choices": "no choices",
             "empty": "empty content",
             "close": "connection error"}
    conversations = [[{"role": "user", "content": f"always {k}"}] for k in kinds]
    for k in kinds:
        server.script(f"always {k}", [], then=k)
    with ChatClient(make_cfg(server, max_retries=1, max_concurrency=8)) as client:
        results = client.complete_many(conversations)
        stats = client.stats
    assert [r.error for r in results] == [f"{v} after 2 attempts" for v in kinds.values()]
    assert all(r.text is None and r.attempts == 2 and r.prompt_tokens == 0 for r in results)
    assert stats["failures"] == dict(Counter(kinds.values()))
    assert all(len(server.for_content(f"always {k}")) == 2 for k in kinds)


def test_client_errors_are_not_retried(server):
    server.script("bad", [], then="400")
    with ChatClient(make_cfg(server)) as client:
        [res] = client.complete_many([[{"role": "user", "content": "bad"}]])
    assert res.text is None and res.attempts == 1
    assert res.error.startswith("http 400 after 1 attempt: bad request")


def test_concurrency_never_exceeds_bound(server):
    server.delay_s = 0.04
    client = ChatClient(make_cfg(server, max_concurrency=3))
    out: dict[int, list] = {}

    def work(k: int) -> None:
        out[k] = client.complete_many(convs(12, f"thread{k}"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]  # two callers share one client
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    client.close()
    assert server.max_in_flight <= 3
    assert server.max_in_flight >= 2  # requests really overlapped
    for k in range(2):
        assert [r.text for r in out[k]] == [expected_reply(c) for c in convs(12, f"thread{k}")]


def test_backoff_is_exponential(server):
    server.script("flaky", ["500"] * 4)
    base = 0.06
    with ChatClient(make_cfg(server, max_retries=4, backoff_s=base)) as client:
        [res] = client.complete_many([[{"role": "user", "content": "flaky"}]])
    assert res.text is not None and res.attempts == 5
    times = [r.time for r in server.for_content("flaky")]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    for i, gap in enumerate(gaps):
        assert gap >= base * 2**i * 0.95, gaps
    assert gaps[3] > 3 * gaps[0], gaps  # 0.48 vs 0.06 nominal


def test_retry_after_is_honoured_and_capped(server):
    server.script("wait", ["429:0.3"])
    server.script("huge", ["429:100"])
    cfg = make_cfg(server, backoff_s=0.001, backoff_max_s=0.5)
    t0 = time.monotonic()
    with ChatClient(cfg) as client:
        results = client.complete_many([[{"role": "user", "content": c}] for c in ("wait", "huge")])
    assert time.monotonic() - t0 < 3
    assert all(r.text is not None and r.attempts == 2 for r in results)
    wait = [r.time for r in server.for_content("wait")]
    huge = [r.time for r in server.for_content("huge")]
    assert wait[1] - wait[0] >= 0.28
    assert 0.45 <= huge[1] - huge[0] < 2.0


def test_cache_second_run_makes_no_requests(server, tmp_path):
    conversations = convs(10)
    server.script("question 4", [], then="500")  # a failure: not cached
    cfg = make_cfg(server, cache_dir=str(tmp_path / "cache"), max_retries=0)
    with ChatClient(cfg) as client:
        first = client.complete_many(conversations)
    assert sum(r.text is None for r in first) == 1
    n = len(server.records)
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 9
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    server.script("question 4", [])  # healthy now
    progress = []
    with ChatClient(cfg) as client:
        second = client.complete_many(conversations, progress=progress.append)
        stats = client.stats
    assert [r.content for r in server.records[n:]] == ["question 4"]  # only the failed one again
    assert [r.text for r in second] == [expected_reply(c) for c in conversations]
    assert [r.cached for r in second] == [i != 4 for i in range(10)]
    assert stats["cache_hits"] == 9 and stats["requests"] == 1
    assert progress == [9, 10]
    n = len(server.records)

    with ChatClient(cfg) as client:  # third run: everything cached, zero HTTP
        third = client.complete_many(conversations)
        assert client.stats["requests"] == 0
    assert len(server.records) == n
    assert all(r.cached and r.attempts == 0 and r.completion_tokens == 7 for r in third)
    assert [r.text for r in third] == [r.text for r in second]


def test_cache_resumes_a_killed_run_and_keys_on_request(server, tmp_path):
    cache = str(tmp_path / "c")
    conversations = convs(8)
    with ChatClient(make_cfg(server, cache_dir=cache)) as client:
        client.complete_many(conversations[:5])  # "killed" after 5
    # another key, same cache: the key is not part of the hash
    with ChatClient(make_cfg(server, cache_dir=cache), api_key="another-key") as client:
        client.complete_many(conversations)
    assert sorted(r.content for r in server.records[5:]) == [f"question {i}" for i in range(5, 8)]
    # a different sampling setting or model is a different request
    with ChatClient(make_cfg(server, cache_dir=cache, temperature=0.7)) as client:
        assert not any(r.cached for r in client.complete_many(conversations[:1]))
    with ChatClient(make_cfg(server, cache_dir=cache, model="other")) as client:
        assert not any(r.cached for r in client.complete_many(conversations[:1]))
    # a corrupt entry is a miss, not a crash
    for p in Path(cache).rglob("*.json"):
        p.write_text("{not json")
    with ChatClient(make_cfg(server, cache_dir=cache)) as client:
        res = client.complete_many(conversations[:2])
    assert [r.text for r in res] == [expected_reply(c) for c in conversations[:2]] and not res[0].cached


def test_api_key_sent_but_never_leaked(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("THINKRL_TEST_CHAT_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    server.script("question 1", ["500"])
    server.script("question 2", [], then="500")
    server.script("question 3", [], then="400")  # the server echoes the Authorization header in its error
    cfg = make_cfg(server, api_key_env="THINKRL_TEST_CHAT_KEY", cache_dir=str(tmp_path / "cache"))
    with ChatClient(cfg) as client:
        results = client.complete_many(convs(4))
        stats = client.stats
        text = repr(client)
    assert {r.headers.get("Authorization") for r in server.records} == {f"Bearer {SECRET}"}
    assert results[0].text and results[1].text and results[2].error and results[3].error
    assert "***" in results[3].error
    files = list((tmp_path / "cache").rglob("*"))
    assert sum(p.suffix == ".json" for p in files) == 2
    leaks = [p.read_text() for p in files if p.is_file()]
    leaks += [json.dumps(stats), text, repr(cfg), json.dumps(dataclasses.asdict(cfg)), caplog.text]
    leaks += [r.error or "" for r in results]
    assert caplog.text  # retries were logged, without the key
    for s in leaks:
        assert SECRET not in s and "S3CRET" not in s


def test_no_key_no_authorization_header(server, monkeypatch):
    monkeypatch.delenv(NO_KEY_ENV, raising=False)
    with ChatClient(make_cfg(server)) as client:
        client.complete_many(convs(2))
    assert all("Authorization" not in r.headers for r in server.records)


def test_bad_key_characters_raise_without_echoing_it(server):
    with pytest.raises(ThinkrlError) as exc:
        ChatClient(make_cfg(server), api_key="sk-abc\ndef")
    assert "sk-abc" not in str(exc.value)


def test_call_from_worker_thread(server):
    out = {}

    def work():
        with ChatClient(make_cfg(server)) as client:
            out["res"] = client.complete_many(convs(6))

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=20)
    assert [r.text for r in out["res"]] == [expected_reply(c) for c in convs(6)]


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/v1/chat/completions"])
def test_base_url_forms(server, suffix):
    with ChatClient(make_cfg(server, base_url=server.url + suffix)) as client:
        [res] = client.complete_many(convs(1))
    assert res.text and server.records[0].path == "/v1/chat/completions"


def test_connection_refused_is_a_result_not_an_exception():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    cfg = ChatConfig(base_url=f"http://127.0.0.1:{port}", model="m", api_key_env=NO_KEY_ENV, max_retries=1,
                     backoff_s=0.01, timeout_s=1.0)
    with ChatClient(cfg) as client:
        res = client.complete_many(convs(3))
        assert client.stats["failures"] == {"connection error": 3}
    assert [r.error for r in res] == ["connection error after 2 attempts"] * 3


@pytest.mark.parametrize("kw", [dict(base_url="ftp://127.0.0.1:1"), dict(base_url="127.0.0.1:8000"),
                                dict(base_url="http://"), dict(model=""), dict(max_concurrency=0),
                                dict(timeout_s=0), dict(max_retries=-1), dict(backoff_s=-1.0),
                                dict(extra_body={"model": "x"}), dict(extra_body={"temperature": 1}),
                                dict(extra_body={"stream": True}), dict(extra_body={"top_p": 0.9}, top_p=0.8),
                                dict(extra_body=[("top_k", 5)])])
def test_config_errors(kw):
    base = dict(base_url="http://127.0.0.1:1", model="m")
    with pytest.raises(ThinkrlError):
        ChatConfig(**{**base, **kw})


def test_malformed_conversation_is_a_config_error(server):
    with ChatClient(make_cfg(server)) as client:
        with pytest.raises(ThinkrlError, match="conversation 1"):
            client.complete_many([[{"role": "user", "content": "ok"}], "not a conversation"])  # type: ignore[list-item]
    assert server.records == []


def test_empty_batch(server):
    with ChatClient(make_cfg(server)) as client:
        assert client.complete_many([]) == []


def test_validate_asks_again_with_a_reminder_and_caches_only_usable_replies(server, tmp_path):
    """A reply `validate` refuses is asked again (reply + format reminder appended) up to parse_retries times;
    the usable one is cached under the original request, so a rerun asks nothing; one refused to the end is an
    `unusable reply` failure that keeps its last reply and is never cached."""
    server.reply_fn = lambda messages: "good" if len(messages) > 2 else "bad"   # only a reminded request is good
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]

    def validate(i, text):
        return "" if text == "good" or i == 2 else "no labels"   # conversation 2 accepts anything

    cfg = make_cfg(server, cache_dir=str(tmp_path / "c"), parse_retries=1)
    with ChatClient(cfg) as c:
        res = c.complete_many(convs, validate=validate)
    assert [r.text for r in res] == ["good", "good", "bad"] and all(r.error is None for r in res)
    reminded = [r.body["messages"] for r in server.records if len(r.body["messages"]) == 3]
    assert len(reminded) == 2 and reminded[0][1] == {"role": "assistant", "content": "bad"}
    assert "could not be used: no labels" in reminded[0][2]["content"]
    asked = len(server.records)
    with ChatClient(cfg) as c:
        again = c.complete_many(convs, validate=validate)
    assert len(server.records) == asked and [r.text for r in again] == ["good", "good", "bad"]
    assert all(r.cached for r in again)
    # refused to the end: a failure, never cached; with validate the old cached "bad" of conversation 2 is a miss
    server.reply_fn = lambda messages: "bad"
    with ChatClient(dataclasses.replace(cfg, parse_retries=2)) as c:
        res = c.complete_many([convs[2]], validate=lambda i, t: "" if t == "good" else "no labels")
        assert c.stats["failures"] == {"unusable reply": 1}
    assert res[0].text == "bad" and res[0].error == "unusable reply (no labels) after 3 replies"
    assert len(server.records) == asked + 3


def test_extra_body_keys_and_temperature_reach_the_server_and_key_the_cache(server, tmp_path):
    """extra_body's keys are merged into the request body (the OpenAI client's extra_body), beside the
    temperature; both are part of the cached request, so changing either asks the server again. A config
    without extra_body sends the body older versions sent: its cache key is the one they wrote (a pinned hash)."""
    cache, conv = str(tmp_path / "c"), convs(1)
    extra = {"chat_template_kwargs": {"enable_thinking": False}, "top_p": 0.95}
    with ChatClient(make_cfg(server, cache_dir=cache, temperature=0.6, extra_body=extra)) as client:
        client.complete_many(conv)
    body = server.records[-1].body
    assert body["temperature"] == 0.6 and body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["top_p"] == 0.95 and body["model"] == "judge-test" and body["messages"] == conv[0]
    for kw in (dict(temperature=0.7, extra_body=extra), dict(temperature=0.6), dict(temperature=0.6, extra_body={
            "chat_template_kwargs": {"enable_thinking": True}})):
        with ChatClient(make_cfg(server, cache_dir=cache, **kw)) as client:
            assert not client.complete_many(conv)[0].cached, kw
    with ChatClient(make_cfg(server, cache_dir=cache, temperature=0.6, extra_body=dict(extra))) as client:
        assert client.complete_many(conv)[0].cached                       # the same request: from the cache
    with ChatClient(ChatConfig(base_url=server.url, model="judge-test", api_key_env=NO_KEY_ENV)) as client:
        key = client._cache_key(client._body(0, conv[0]))
    assert key == "61a9fd9f6c8255be126bbb8df95c336e97c1164d06a5e434a95143f7defbb71d"


def test_thinking_returned_apart_is_not_the_reply_and_a_cut_one_is_not_asked_again(server):
    """vLLM's reasoning parsers return the thinking in `reasoning_content` (`reasoning` in newer vLLM): the reply
    is the content alone. A reply with thinking and no content, cut at max tokens, would be cut again: it fails at
    once with the cause and what to do, where an empty content is retried."""
    from thinkrl.judge.thinking import THINK_CUT

    def reply(messages):
        q = messages[-1]["content"]
        if q == "cut":
            return {"content": None, "reasoning_content": "Step 2 looks off, but", "finish_reason": "length"}
        if q == "cut new":
            return {"content": "", "reasoning": "Step 2 looks off, but", "finish_reason": "length"}
        return {"content": "the answer", "reasoning_content": "thinking {\"labels\": []}"}

    server.reply_fn = reply
    conversations = [[{"role": "user", "content": q}] for q in ("fine", "cut", "cut new")]
    with ChatClient(make_cfg(server)) as client:
        res = client.complete_many(conversations)
        assert client.stats["failures"] == {THINK_CUT: 2}
    assert res[0].text == "the answer" and res[0].error is None
    assert [r.error for r in res[1:]] == [f"{THINK_CUT} after 1 attempt"] * 2 and res[1].text is None
    assert len(server.for_content("cut")) == 1 == len(server.for_content("cut new"))
