"""A real HTTP server speaking the OpenAI chat-completions protocol, with scripted faults, for client tests.

    with FaultServer() as srv:                      # ThreadingHTTPServer on 127.0.0.1, a free port
        srv.script("question 7", ["500", "429", "ok"])   # attempts of the request whose last message
        srv.script("question 9", [], then="500")         #   is "question 7" / "question 9" (then: later)
        srv.mode = "garbage"                        # or a fault for every request without a script
        ... ChatClient(ChatConfig(base_url=srv.url, ...)) ...
        srv.records      # every request: time, path, headers (Authorization included), body (parsed JSON)
        srv.max_in_flight

A good reply is `expected_reply(messages)` (a hash of the messages, so tests can check it reached the right
request) with `usage`; `reply_fn(messages)` may return a dict instead: the message's fields (`content`,
`reasoning_content`, as a vLLM reasoning parser sends them) and optionally `finish_reason` (e.g. `length`). Faults: ok, 500/502/503/400 (http status), 429 (Retry-After: 0, or `429:<seconds>`),
slow (answers after `slow_s`, past the client's timeout), trickle (a good reply sent a few bytes at a time
over `slow_s`: every read is quick, the whole is too slow), garbage (non-JSON body), truncated (Content-Length
larger than the body, then the connection closes), no_choices (JSON without `choices`), empty (empty
content), close (closes the connection without a response).

Only 127.0.0.1; every sleep wakes up at shutdown, so stopping the server never waits on a slow handler.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("ok", "500", "502", "503", "400", "429", "slow", "trickle", "garbage", "truncated", "no_choices",
          "empty", "close")


def expected_reply(messages: list[dict]) -> str:
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
    return f"echo {digest}"


@dataclass
class Record:
    time: float          # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    body: dict
    fault: str

    @property
    def content(self) -> str:
        return str(self.body.get("messages", [{}])[-1].get("content", ""))


class FaultServer:
    def __init__(self, delay_s: float = 0.0, slow_s: float = 2.0):
        self.delay_s = delay_s        # every good reply waits this long (to make requests overlap)
        self.slow_s = slow_s
        self.mode = "ok"              # fault for requests without a script
        self.reply_fn = expected_reply  # messages -> content of a good reply (a judge test answers JSON)
        self.records: list[Record] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._plans: dict[str, tuple[list[str], str]] = {}
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, content: str, faults: list[str], then: str = "ok") -> None:
        """Attempt k of the request whose last message is `content` gets faults[k], later ones `then`."""
        for f in [*faults, then]:
            assert f.split(":")[0] in FAULTS, f
        with self._lock:
            self._plans[content] = (list(faults), then)

    def for_content(self, content: str) -> list[Record]:
        return [r for r in self.records if r.content == content]

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- used by the handler ----

    def _next_fault(self, content: str) -> str:
        with self._lock:
            k = self._seen.get(content, 0)
            self._seen[content] = k + 1
            if content not in self._plans:
                return self.mode
            faults, then = self._plans[content]
            return faults[k] if k < len(faults) else then

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _make_handler(srv: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: no stale keep-alive surprises

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            t = time.monotonic()
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            content = str((body.get("messages") or [{}])[-1].get("content", ""))
            fault = srv._next_fault(content)
            with srv._lock:
                srv.records.append(Record(t, self.path, dict(self.headers.items()), body, fault))
            srv._enter()
            left = False
            try:
                kind, _, arg = fault.partition(":")
                if kind == "slow":
                    srv._leave()
                    left = True
                    if srv._stop.wait(srv.slow_s):
                        return
                    kind = "ok"
                if kind == "ok" and srv.delay_s:
                    srv._stop.wait(srv.delay_s)
                auth = self.headers.get("Authorization", "")
                status, headers, payload, declared = _response(kind, arg, body, auth, srv.reply_fn)
                if not left:
                    srv._leave()  # before writing: the client still holds its slot until it has read us
                    left = True
                if kind == "close":
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(declared))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if kind == "trickle":
                    step = max(1, len(payload) // 10)
                    for i in range(0, len(payload), step):
                        self.wfile.write(payload[i:i + step])
                        self.wfile.flush()
                        if srv._stop.wait(srv.slow_s / 10):
                            return
                else:
                    self.wfile.write(payload)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): fine
            finally:
                if not left:
                    srv._leave()

    return Handler


def _response(kind: str, arg: str, body: dict, auth: str, reply_fn=expected_reply
              ) -> tuple[int, dict[str, str], bytes, int]:
    """(status, extra headers, payload, declared Content-Length) for a fault kind. A 400 echoes the
    Authorization header in its message, as careless servers do, to test that the client scrubs it."""
    messages = body.get("messages", [])
    said = reply_fn(messages)
    message = {"role": "assistant", **(said if isinstance(said, dict) else {"content": said})}
    finish = message.pop("finish_reason", "stop")
    reply = {"id": "cmpl-test", "object": "chat.completion", "model": body.get("model", ""),
             "choices": [{"index": 0, "finish_reason": finish, "message": message}],
             "usage": {"prompt_tokens": len(json.dumps(messages)) // 4, "completion_tokens": 7,
                       "total_tokens": len(json.dumps(messages)) // 4 + 7}}
    headers: dict[str, str] = {}
    status = 200
    if kind in ("500", "502", "503"):
        status, reply = int(kind), {"error": {"message": f"injected {kind}", "code": int(kind)}}
    elif kind == "400":
        message = f"bad request (credentials: {auth or 'none'})"
        status, reply = 400, {"error": {"message": message, "code": 400}}
    elif kind == "429":
        status, reply = 429, {"error": {"message": "rate limited"}}
        headers["Retry-After"] = arg or "0"
    elif kind == "no_choices":
        reply = {"id": "cmpl-test", "object": "chat.completion", "usage": reply["usage"]}
    elif kind == "empty":
        reply["choices"][0]["message"]["content"] = ""
    payload = json.dumps(reply).encode()
    if kind == "garbage":
        payload = b"<html>502 Bad Gateway</html> not json {"
    declared = len(payload)
    if kind == "truncated":
        payload = payload[: len(payload) // 2]
    return status, headers, payload, declared
