"""A client for any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, llama.cpp, a hosted API).

Used by the endpoint judge (DESIGN §6): thousands of judge calls per round, each of which may hit an
overloaded or flaky server, so the client is built to never lose a request and never crash a stage.

    cfg = ChatConfig(base_url="http://127.0.0.1:8000", model="Qwen/Qwen3-32B", cache_dir="runs/x/judge_cache")
    with ChatClient(cfg) as client:                       # key from $OPENAI_API_KEY, if set
        results = client.complete_many([[{"role": "user", "content": "2+2?"}], ...], progress=bar.update)
    results[i].text  # assistant content, or None with results[i].error = "http 500 after 5 attempts"

Outward API is synchronous and thread-safe; it may be called from any thread (no signals, no event loop).

Concurrency: a thread pool per call, and one semaphore per client that is held only while an HTTP attempt
is in flight, so at most `max_concurrency` requests reach the server at once, even when several threads
share a client, and a request sleeping before its retry does not hold a slot.

Retries and timeouts: every request gets at most `max_retries + 1` attempts. Retried: timeouts (connect,
read, or the whole body taking longer than `timeout_s`), connection errors, bodies cut short (connection
closed before Content-Length bytes arrived), HTTP 408/409/425/429 and 5xx, non-JSON bodies, JSON without
`choices`, empty content. Not retried: other 4xx (bad request, bad key, unknown model; a retry cannot
help). Before retry k (k = 0, 1, ...) the client sleeps `backoff_s * 2**k` (capped at `backoff_max_s`)
times 1..1.25 (jitter), or the server's `Retry-After` (seconds or an HTTP date, also capped) on a 429/503
that sends one. So one request takes at most about (attempts) * 2 * timeout_s + sum of the sleeps: every
loop is bounded in count and in time. After the last attempt the result is
`ChatResult(text=None, error="<reason> after <n> attempts")`; reasons are the keys of `stats["failures"]`
(`timeout`, `connection error`, `truncated body`, `http 500`, `http 429`, `bad json`, `no choices`,
`empty content`, `unusable reply`, `reply cut inside <think>: ...`). `complete_many` never raises for a per-request problem and returns one result per
conversation, in input order. `ThinkrlError` is raised only for configuration problems (bad URL scheme,
non-positive limits, malformed conversations, an API key with characters a header cannot carry).

Request body: model, messages, temperature, max_tokens, top_p and seed when set, and the keys of `extra_body`
merged in (the OpenAI client's `extra_body`: what a server takes beyond the OpenAI API, e.g. vLLM's
`chat_template_kwargs`); an `extra_body` key the client sets itself is refused (ThinkrlError).

Replies: the client reads the message's `content`. The thinking a server-side reasoning parser returns apart
(`reasoning_content`, or `reasoning` in newer vLLM) is not part of the reply; a reply that holds only such
thinking and was cut at max_tokens is a failure that is not retried (`THINK_CUT`: it would be cut again).

Cache (`cache_dir`): the key is the sha256 of the canonical JSON of the request body (above); never the base URL
nor the API key. A body without extra keys is the one older versions sent, so their entries are still found.
Each successful reply is one small JSON file `<cache_dir>/<key[:2]>/<key>.json`, written to a temp name and
renamed, so a run killed with kill -9 leaves only whole entries, and a rerun makes zero HTTP calls for the
requests already answered. Failures are not cached. An unreadable entry counts as a miss.

Usable replies (`validate`): a caller that needs a reply in a given format (the judge: one label per step)
passes `validate(i, text) -> problem`. A reply it refuses is not a success: the client asks again with the
bad reply and a format reminder appended (`reminded`), up to `parse_retries` times, then gives up with
`error="unusable reply (<problem>) after <n> replies"` and the last reply in `text`; a reply cut at
max_tokens is not asked again (it would be cut again). Only a usable reply is
cached, under the key of the original request; a cached entry that `validate` refuses (an older run's) is a
miss. Note: with
temperature > 0 the cache pins one sample per distinct request (identical conversations share it).

The API key comes from the `api_key` argument, else from the environment variable named by
`cfg.api_key_env` (the config holds the variable's name, never the key). It is sent as
`Authorization: Bearer <key>` only when present, and never appears in the config, logs, cache files,
`stats`, error strings or `repr` (server error text quoted in an error is scrubbed of it too).

Proxies from the environment (HTTP_PROXY...) are honoured, except for loopback hosts (127.0.0.1, localhost,
::1), which are always reached directly.

Paper: the paper's judge is a Qwen3-32B-class model behind an inference server; it publishes no client
details. Everything here (retry policy, cache) is thinkrl's own engineering choice.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from thinkrl.errors import ThinkrlError
from thinkrl.judge.thinking import THINK_CUT

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx
MAX_BODY_BYTES = 32 * 2**20                      # a reply larger than this is treated as garbage
CACHE_VERSION = 1                                # bump to invalidate every cache entry
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
UNUSABLE = "unusable reply"                      # the failure reason of a reply `validate` refused to the end
CUT = "reply cut at max tokens"                  # such a reply is not asked again: it would be cut again
REMINDER = ("Your reply could not be used: {problem}. Answer again, exactly in the format asked for, covering "
            "every item.")

Validate = Callable[[int, str], str]
"""validate(i, text) -> '' when the reply to conversation i is usable, else what is wrong with it (one line)."""


def unusable(problem: str, replies: int) -> str:
    """The error of a request whose replies `validate` refused to the end."""
    return f"{UNUSABLE} ({problem}) after {replies} repl{'ies' if replies > 1 else 'y'}"


def reminded(conversation: list[dict], reply: str, problem: str) -> list[dict]:
    """The conversation asked again after an unusable reply: the reply and a format reminder appended."""
    return [*conversation, {"role": "assistant", "content": reply},
            {"role": "user", "content": REMINDER.format(problem=problem)}]


@dataclass(frozen=True)
class ChatConfig:
    base_url: str = field(metadata={"help": "server URL, e.g. http://127.0.0.1:8000 (with or without /v1)"})
    model: str = field(metadata={"help": "model name sent in every request"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the API key (sent as a Bearer token when set; never stored)"})
    max_concurrency: int = field(default=8, metadata={"help": "most requests in flight at once"})
    timeout_s: float = field(default=120.0, metadata={"help": "per-attempt time limit in seconds"})
    max_retries: int = field(default=4, metadata={
        "help": "retries after the first attempt (timeouts, connection errors, 429, 5xx, bad bodies)"})
    backoff_s: float = field(default=1.0, metadata={
        "help": "first retry delay in seconds; doubles each retry, plus up to 25% jitter"})
    backoff_max_s: float = field(default=30.0, metadata={
        "help": "cap on one retry delay (and on Retry-After)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0 = greedy)"})
    max_tokens: int = field(default=2048, metadata={"help": "maximum completion tokens per reply"})
    top_p: float | None = field(default=None, metadata={
        "help": "nucleus sampling mass (server default if unset)"})
    seed: int | None = field(default=None, metadata={"help": "sampling seed sent to the server, if set"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "directory caching successful replies by request hash (none: no cache)"})
    parse_retries: int = field(default=2, metadata={
        "help": "with a `validate` function: ask again, with a format reminder, up to this many times when a "
                "reply cannot be used"})
    extra_body: dict[str, Any] | None = field(default=None, metadata={
        "help": "keys merged into every request body (server-specific parameters, e.g. chat_template_kwargs)"})

    def __post_init__(self) -> None:
        url = urlsplit(self.base_url or "")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ThinkrlError(f"chat base_url must look like http://host:port or https://host/v1, "
                               f"got {self.base_url!r}")
        if not self.model:
            raise ThinkrlError("chat model name is empty: expected the model name the server serves")
        for name, lo in (("max_concurrency", 1), ("max_tokens", 1), ("max_retries", 0), ("parse_retries", 0)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < lo:
                raise ThinkrlError(f"chat {name} must be an integer >= {lo}, got {getattr(self, name)!r}")
        for name in ("timeout_s", "backoff_s", "backoff_max_s", "temperature"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0 or (name == "timeout_s" and v == 0):
                kind = "positive" if name == "timeout_s" else "non-negative"
                raise ThinkrlError(f"chat {name} must be a {kind} number, got {v!r}")
        if self.extra_body is not None:
            if not isinstance(self.extra_body, dict):
                raise ThinkrlError(f"chat extra_body must be a dict of request keys, got {type(self.extra_body).__name__}")
            clash = sorted(set(self.extra_body) & set(self.own_keys))
            if clash:
                raise ThinkrlError(f"chat extra_body sets {', '.join(map(repr, clash))}: the client sets model, "
                                   "messages, temperature, max_tokens (top_p and seed when given) itself and reads "
                                   "whole replies (no stream)")

    @property
    def own_keys(self) -> tuple[str, ...]:
        """The body keys an `extra_body` may not hold: those the client sets itself, and `stream` (it reads whole
        replies)."""
        optional = tuple(k for k in ("top_p", "seed") if getattr(self, k) is not None)
        return ("model", "messages", "temperature", "max_tokens", "stream", *optional)

    @property
    def endpoint(self) -> str:
        """`base_url` normalised to `.../v1/chat/completions`."""
        base = self.base_url.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        return (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"


@dataclass(frozen=True)
class ChatResult:
    text: str | None              # the assistant message content, None when no reply came
    error: str | None             # one-line reason after all retries, None on success (an `unusable reply`
                                  # failure keeps its last reply in `text`)
    prompt_tokens: int            # from the reply's `usage`, else 0
    completion_tokens: int
    attempts: int                 # HTTP attempts made for this request (0 when served from the cache)
    cached: bool
    finish_reason: str | None = None  # `stop`, `length` (reply cut at max_tokens), ... as the server said


@dataclass(frozen=True)
class _Attempt:
    """The outcome of one HTTP attempt: a reply, or a failure reason (retryable or not)."""
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reason: str | None = None     # failure reason, None on success
    retry: bool = True            # worth another attempt
    retry_after: float | None = None
    detail: str = ""              # server's error text for non-retryable 4xx (key scrubbed)


class ChatClient:
    """Bounded-concurrency, retrying, caching client for `/v1/chat/completions` (see the module docstring)."""

    def __init__(self, cfg: ChatConfig, api_key: str | None = None):
        self.cfg = cfg
        key = api_key if api_key is not None else os.environ.get(cfg.api_key_env)
        key = (key or "").strip() or None
        if key is not None and not all(33 <= ord(c) < 127 for c in key):
            raise ThinkrlError(f"the API key (from the api_key argument or ${cfg.api_key_env}) contains "
                               "spaces or non-printable/non-ASCII characters; a header cannot carry them")
        self.__key = key
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        self._endpoint = cfg.endpoint
        loopback = (urlsplit(self._endpoint).hostname or "") in LOOPBACK
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(cfg.timeout_s), trust_env=not loopback,
            limits=httpx.Limits(max_connections=cfg.max_concurrency,
                                max_keepalive_connections=cfg.max_concurrency),
        )
        self._slots = threading.BoundedSemaphore(cfg.max_concurrency)
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._stats: dict[str, Any] = {"conversations": 0, "requests": 0, "cache_hits": 0, "retries": 0,
                                       "failures": Counter(), "retry_reasons": Counter(),
                                       "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}

    def __repr__(self) -> str:  # no key, ever
        return f"ChatClient(endpoint={self._endpoint!r}, model={self.cfg.model!r})"

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def stats(self) -> dict:
        """Counters over this client's life: conversations, requests (HTTP attempts), cache_hits, retries,
        failures {reason: n} (requests that failed for good), retry_reasons {reason: n}, tokens, seconds."""
        with self._lock:
            s = dict(self._stats)
            s["failures"] = dict(s["failures"])
            s["retry_reasons"] = dict(s["retry_reasons"])
            s["seconds"] = round(s["seconds"], 3)
            return s

    # ---- public ----

    def complete_many(self, conversations: list[list[dict]],
                      progress: Callable[[int], None] | None = None,
                      validate: Validate | None = None) -> list[ChatResult]:
        """One result per conversation, in input order; progress(done) is called from the calling thread
        with the cumulative count of finished conversations (cache hits first). `validate(i, text)` says what
        makes reply i unusable ('' when it is usable): see `Validate`."""
        t0 = time.monotonic()
        bodies = [self._body(i, conv) for i, conv in enumerate(conversations)]
        keys = [self._cache_key(b) for b in bodies]
        results: list[ChatResult | None] = [self._cache_get(k) for k in keys]
        if validate is not None:  # an entry an older thinkrl cached without validating is a miss
            results = [r if r is None or not validate(i, r.text or "") else None for i, r in enumerate(results)]
        todo = [i for i, r in enumerate(results) if r is None]
        done = len(conversations) - len(todo)
        with self._lock:
            self._stats["conversations"] += len(conversations)
            self._stats["cache_hits"] += done
        if progress is not None and done:
            progress(done)
        if todo:
            pool = ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(todo)),
                                      thread_name_prefix="thinkrl-chat")
            try:
                futures = {pool.submit(self._complete_valid, i, conversations[i], bodies[i], keys[i], validate): i
                           for i in todo}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    done += 1
                    if progress is not None:
                        progress(done)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._stats["seconds"] += time.monotonic() - t0
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    # ---- one request ----

    def _body(self, i: int, conv: list[dict]) -> bytes:
        if not (isinstance(conv, list) and conv and all(isinstance(m, dict) and "role" in m for m in conv)):
            raise ThinkrlError(f"conversation {i} must be a non-empty list of {{'role': ..., 'content': ...}}"
                               f" messages, got {type(conv).__name__}")
        body: dict[str, Any] = {**(self.cfg.extra_body or {}), "model": self.cfg.model, "messages": conv,
                                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        if self.cfg.top_p is not None:
            body["top_p"] = self.cfg.top_p
        if self.cfg.seed is not None:
            body["seed"] = self.cfg.seed
        try:
            return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as e:
            raise ThinkrlError(f"conversation {i} is not JSON-serialisable: {e}") from None

    def _complete_valid(self, i: int, conv: list[dict], body: bytes, key: str,
                        validate: Validate | None) -> ChatResult:
        """`_complete_one`, then while `validate` finds the reply unusable and parse retries are left, the same
        conversation again with the bad reply and a format reminder appended. A usable reply is cached under the
        key of the original request (a rerun finds it at once); an unusable one never is."""
        res = self._complete_one(body)
        tokens = [0, 0]
        for retry in range(self.cfg.parse_retries + 1):
            if res.error is not None:
                break
            tokens[0] += res.prompt_tokens
            tokens[1] += res.completion_tokens
            try:
                problem = validate(i, res.text or "") if validate is not None else ""
            except Exception as e:  # noqa: BLE001 - a validator bug is this request's failure, never a crash
                problem = f"validate failed: {type(e).__name__}: {e}"[:200]
            if not problem:
                self._cache_put(key, res)
                return replace(res, prompt_tokens=tokens[0], completion_tokens=tokens[1])
            if retry == self.cfg.parse_retries or res.finish_reason == "length":
                with self._lock:
                    self._stats["failures"][UNUSABLE] += 1
                why = f"{problem}; {CUT}" if res.finish_reason == "length" else problem
                return replace(res, error=unusable(why, retry + 1), prompt_tokens=tokens[0],
                               completion_tokens=tokens[1])
            with self._lock:
                self._stats["retries"] += 1
                self._stats["retry_reasons"][UNUSABLE] += 1
            res = self._complete_one(self._body(i, reminded(conv, res.text or "", problem)))
        return res

    def _complete_one(self, body: bytes) -> ChatResult:
        n_attempts = self.cfg.max_retries + 1
        a = _Attempt(reason="not attempted")
        key = self._cache_key(body)
        for attempt in range(n_attempts):
            with self._slots:
                with self._lock:
                    self._stats["requests"] += 1
                a = self._attempt(body)
            if a.reason is None:
                with self._lock:
                    self._stats["prompt_tokens"] += a.prompt_tokens
                    self._stats["completion_tokens"] += a.completion_tokens
                return ChatResult(a.text, None, a.prompt_tokens, a.completion_tokens, attempt + 1, False,
                                  a.finish_reason)
            if not a.retry or attempt == n_attempts - 1:
                break
            delay = self._delay(attempt, a.retry_after)
            with self._lock:
                self._stats["retries"] += 1
                self._stats["retry_reasons"][a.reason] += 1
            log.debug("chat request %s: %s on attempt %d/%d, retrying in %.2fs", key[:12], a.reason,
                      attempt + 1, n_attempts, delay)
            time.sleep(delay)
        with self._lock:
            self._stats["failures"][a.reason] += 1
        n = attempt + 1
        error = f"{a.reason} after {n} attempt{'s' if n > 1 else ''}" + (f": {a.detail}" if a.detail else "")
        log.debug("chat request %s failed: %s", key[:12], error)
        return ChatResult(None, error, 0, 0, n, False)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cfg.backoff_max_s)
        with self._lock:
            jitter = 1.0 + 0.25 * self._rng.random()
        return min(self.cfg.backoff_s * 2**attempt * jitter, self.cfg.backoff_max_s)

    def _attempt(self, body: bytes) -> _Attempt:
        """One POST; every transport or protocol problem becomes a reason, never an exception."""
        deadline = time.monotonic() + self.cfg.timeout_s
        try:
            with self._http.stream("POST", self._endpoint, content=body) as resp:
                try:
                    raw = self._read_body(resp, deadline)
                except httpx.TimeoutException:
                    return _Attempt(reason="timeout")
                except httpx.TransportError:  # closed before Content-Length bytes, broken chunking
                    return _Attempt(reason="truncated body")
                status, retry_after_header = resp.status_code, resp.headers.get("retry-after")
        except httpx.TimeoutException:
            return _Attempt(reason="timeout")
        except httpx.TransportError:        # refused, reset, disconnected before a response
            return _Attempt(reason="connection error")
        except httpx.HTTPError:
            return _Attempt(reason="http error")
        if raw is None:
            return _Attempt(reason="timeout")
        if status != 200:
            retry = status in RETRY_STATUS or status >= 500
            retry_after = _parse_retry_after(retry_after_header) if status in (429, 503) else None
            detail = "" if retry else self._scrub(_error_detail(raw))
            return _Attempt(reason=f"http {status}", retry=retry, retry_after=retry_after, detail=detail)
        return _parse_reply(raw)

    def _read_body(self, resp: httpx.Response, deadline: float) -> bytes | None:
        """The whole body, or None when it is too slow overall (each read is also bounded by timeout_s)."""
        chunks, size = [], 0
        for chunk in resp.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return b""  # parses as garbage
            if time.monotonic() > deadline:
                return None
        return b"".join(chunks)

    def _scrub(self, text: str) -> str:
        return text.replace(self.__key, "***") if self.__key else text

    # ---- cache ----

    def _cache_key(self, body: bytes) -> str:
        return hashlib.sha256(b"thinkrl-chat-v%d\n" % CACHE_VERSION + body).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return Path(self.cfg.cache_dir) / key[:2] / f"{key}.json" if self.cfg.cache_dir else None

    def _cache_get(self, key: str) -> ChatResult | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d.get("key") != key or not isinstance(d.get("text"), str) or not d["text"]:
                return None
            return ChatResult(d["text"], None, int(d.get("prompt_tokens", 0)),
                              int(d.get("completion_tokens", 0)), 0, True, d.get("finish_reason"))
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def _cache_put(self, key: str, a: ChatResult) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        entry = {"key": key, "model": self.cfg.model, "text": a.text, "finish_reason": a.finish_reason,
                 "prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(entry, ensure_ascii=False, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)


# ---- reply parsing (pure functions) ----

def _parse_reply(raw: bytes) -> _Attempt:
    try:
        d = json.loads(raw)
    except ValueError:  # includes bad UTF-8
        return _Attempt(reason="bad json")
    if not isinstance(d, dict):
        return _Attempt(reason="bad json")
    choices = d.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return _Attempt(reason="no choices")
    msg = choices[0].get("message")
    content = msg.get("content") if isinstance(msg, dict) else None
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        content = "".join(t for t in parts if isinstance(t, str))
    finish = choices[0].get("finish_reason")
    if not isinstance(content, str) or not content.strip():
        thinking = any(isinstance(msg.get(k), str) and msg[k].strip() for k in ("reasoning_content", "reasoning")) \
            if isinstance(msg, dict) else False
        if thinking and finish == "length":  # a reasoning parser took it all: cut inside the thinking
            return _Attempt(reason=THINK_CUT, retry=False)
        return _Attempt(reason="empty content")
    usage = d.get("usage") if isinstance(d.get("usage"), dict) else {}
    return _Attempt(text=content, finish_reason=finish if isinstance(finish, str) else None,
                    prompt_tokens=_int(usage.get("prompt_tokens")),
                    completion_tokens=_int(usage.get("completion_tokens")))


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (`2`, `0.5`) or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _error_detail(raw: bytes, limit: int = 200) -> str:
    """The server's error message for a 4xx, one line, at most `limit` characters."""
    text = raw.decode("utf-8", "replace")
    try:
        d = json.loads(text)
        err = d.get("error", d) if isinstance(d, dict) else d
        text = str(err.get("message", err)) if isinstance(err, dict) else str(err)
    except ValueError:
        pass
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")
