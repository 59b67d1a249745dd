"""Fake LLM provider server to put *behind* Token Spy in tests and benchmarks.

It speaks the real wire formats (Anthropic Messages, OpenAI Chat Completions and
Responses, Moonshot/Kimi and DeepSeek streams) by replaying the recorded fixtures in
``tests/fixtures/`` (byte-identical copies of ``shared/reference/wire-fixtures``).
Stdlib only, HTTP/1.1 with keep-alive, SSE sent with ``Transfer-Encoding: chunked``.

Typical use::

    fake = FakeUpstream(split=7).start()         # SSE cut into random 1..7-byte chunks
    ... point the proxy's upstream at fake.url, send requests through the proxy ...
    fake.requests[-1].headers                    # what the proxy forwarded
    fake.enqueue(anthropic_error(529, "overloaded_error", "Overloaded"))
    fake.stop()

Default replies are chosen from the path and the request's JSON body (see
``FakeUpstream.default_reply``); enqueued ``Reply`` objects override them, FIFO.
Routes are matched on the path *suffix*, so upstream base paths such as
``/api/v1/chat/completions`` work too.

Helper routes (any method):

* ``/echo``: 200 JSON ``{"method", "path", "headers": [[name, value], ...], "body_len"}``.
* ``/big?n=BYTES``: ``n`` bytes of ``application/octet-stream`` with Content-Length.
* ``/sse?events=N&size=S&interval=SECONDS``: N events ``data: <payload>\\n\\n``, one HTTP
  chunk each, ``interval`` seconds apart. Each payload is ``S`` bytes (or longer if S is
  smaller than the timestamp) and starts with ``"%.9f " % time.perf_counter()`` taken just
  before the chunk is written. perf_counter is CLOCK_MONOTONIC on Linux, so a benchmark
  client on the same host can compute relay lag as ``perf_counter() - float(first_word)``.

Deliberate liberties: the ``incomplete-*`` Responses stream sends the recorded
``response.incomplete`` event with its ``sequence_number`` renumbered to follow the
events before it (11); everything else in the event is byte-identical.
"""

import collections
import gzip as _gzip
import json
import os
import random
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FIXTURES = {}
for _name in sorted(os.listdir(_FIXTURE_DIR)):
    with open(os.path.join(_FIXTURE_DIR, _name), "rb") as _f:
        FIXTURES[_name] = _f.read()

Recorded = collections.namedtuple("Recorded", "method path headers body")

SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"
_REASONS = {529: "Overloaded"}


class Reply:
    """One scripted response.

    headers: list of (name, value) pairs, duplicates allowed, order kept. If it already
    contains Content-Length, that value is sent as is (handy for truncated-body tests).
    body: bytes sent with Content-Length (unless chunks is given).
    chunks: iterable of bytes sent with Transfer-Encoding: chunked, one HTTP chunk each,
    chunk_delay seconds apart (empty chunks are skipped).
    delay: seconds before the status line. hang: sleep this long *instead of answering*,
    then close. gzip: gzip `body` and add Content-Encoding: gzip (ignored with chunks:
    pass pre-compressed chunks and the header yourself). close: send
    "Connection: close" and close after the response.
    """

    def __init__(self, status=200, headers=None, body=b"", chunks=None, delay=0.0,
                 chunk_delay=0.0, gzip=False, close=False, hang=0.0):
        self.status = status
        self.headers = list(headers or [])
        self.body = body
        self.chunks = chunks
        self.delay = delay
        self.chunk_delay = chunk_delay
        self.gzip = gzip
        self.close = close
        self.hang = hang

    def payload(self):
        """The body bytes as they go on the wire (gzipped if gzip; chunks joined)."""
        if self.chunks is not None:
            return b"".join(self.chunks)
        return _gzip.compress(self.body, mtime=0) if self.gzip else self.body

    def __repr__(self):
        return "Reply(%d, %d header(s), %s)" % (
            self.status, len(self.headers), "chunked" if self.chunks is not None else "%d bytes" % len(self.body))


# ---------------------------------------------------------------- SSE helpers

def sse_events(data):
    """Split an SSE body into events, each including its terminating blank line."""
    events, start = [], 0
    while start < len(data):
        end = data.find(b"\n\n", start)
        end = len(data) if end < 0 else end + 2
        events.append(data[start:end])
        start = end
    return events


def random_chunks(data, max_len, seed=0):
    """Cut `data` at random points 1..max_len bytes apart (even inside UTF-8 sequences)."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(data):
        n = rng.randint(1, max_len)
        out.append(data[i:i + n])
        i += n
    return out


def _event_json(event):
    for line in event.split(b"\n"):
        if line.startswith(b"data: "):
            try:
                return json.loads(line[6:])
            except ValueError:
                return None
    return None


def openai_chat_stream_body(include_usage):
    """The OpenAI chat stream fixture; without include_usage the `choices:[]` usage chunk is dropped."""
    events = sse_events(FIXTURES["openai_chat_stream.sse"])
    if not include_usage:
        events = [e for e in events if not _is_usage_chunk(_event_json(e))]
    return b"".join(events)


def _is_usage_chunk(obj):
    return isinstance(obj, dict) and obj.get("choices") == [] and bool(obj.get("usage"))


def responses_incomplete_stream_body():
    """The Responses stream with response.completed replaced by the recorded response.incomplete."""
    events = sse_events(FIXTURES["openai_responses_stream.sse"])
    kept = [e for e in events if not e.startswith(b"event: response.completed\n")]
    data = FIXTURES["openai_responses_incomplete_event.json"].strip()
    data = data.replace(b'"sequence_number":5}', b'"sequence_number":%d}' % len(kept))
    return b"".join(kept) + b"event: response.incomplete\ndata: " + data + b"\n\n"


def _compat_nonstream(fixture, model):
    """A plausible non-stream chat.completion built from a Kimi/DeepSeek stream fixture."""
    chunks = [c for c in map(_event_json, sse_events(FIXTURES[fixture])) if isinstance(c, dict)]
    usage, content, reasoning = None, "", ""
    for c in chunks:
        for ch in c.get("choices") or []:
            delta = ch.get("delta") or {}
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
            usage = ch.get("usage") or usage
        usage = c.get("usage") or usage
    message = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"id": chunks[0]["id"], "object": "chat.completion", "created": chunks[0]["created"],
            "model": model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                         "finish_reason": "stop"}], "usage": usage}


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def _rid(prefix="req_"):
    return prefix + uuid.uuid4().hex[:24]


# ---------------------------------------------------------------- error helpers

def anthropic_error(status, type_, message, retry_after=None):
    """An Anthropic HTTP error: {"type":"error","error":{type,message},"request_id"} (as anthropic_529.json)."""
    rid = _rid("req_fake")
    body = _dumps({"type": "error", "error": {"type": type_, "message": message}, "request_id": rid})
    headers = [("content-type", JSON_TYPE), ("request-id", rid), ("x-should-retry", "false")]
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return Reply(status, headers, body)


def openai_error(status, code, message, retry_after=None, type_=None):
    """An OpenAI HTTP error: {"error":{message,type,param,code}}, pretty-printed like openai_429.json."""
    if type_ is None:
        type_ = "tokens" if code == "rate_limit_exceeded" else (
            "insufficient_quota" if code == "insufficient_quota" else
            "server_error" if status >= 500 else "invalid_request_error")
    err = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    headers = [("content-type", JSON_TYPE), ("x-request-id", _rid()), ("x-should-retry", "false")]
    if retry_after is not None:
        headers.append(("retry-after", str(retry_after)))
    return Reply(status, headers, (json.dumps(err, indent=4) + "\n").encode())


# ---------------------------------------------------------------- server

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # no tracebacks on stderr (client disconnects are expected in tests)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-upstream/1.0"
    sys_version = ""

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._connected(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.fake._connected(self.connection, False)

    def log_message(self, format, *args):
        pass

    def version_string(self):
        return self.server_version

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _handle(self):
        fake = self.server.fake
        rec = Recorded(self.command, self.path, list(self.headers.items()), self._read_body())
        fake._record(rec)
        reply = fake._dequeue() or fake.default_reply(rec)
        try:
            self._send(reply, head_only=self.command == "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def _send(self, reply, head_only=False):
        if reply.hang:
            time.sleep(reply.hang)
            self.close_connection = True
            return
        if reply.delay:
            time.sleep(reply.delay)
        headers = list(reply.headers)
        names = {n.lower() for n, _ in headers}
        body = reply.body
        if reply.gzip and reply.chunks is None:
            body = _gzip.compress(body, mtime=0)
            headers.append(("Content-Encoding", "gzip"))
        if reply.chunks is not None:
            headers.append(("Transfer-Encoding", "chunked"))
        elif "content-length" not in names and reply.status not in (204, 304):
            headers.append(("Content-Length", str(len(body))))
        if reply.close:
            headers.append(("Connection", "close"))
        self.send_response(reply.status, _REASONS.get(reply.status))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if not head_only:
            if reply.chunks is None:
                self.wfile.write(body)
            else:
                for i, chunk in enumerate(reply.chunks):
                    if i and reply.chunk_delay:
                        time.sleep(reply.chunk_delay)
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
        if reply.close:
            self.close_connection = True


class FakeUpstream:
    """The fake provider. See the module docstring; attributes: url, requests, connections."""

    def __init__(self, split=None, seed=0, gzip_json=False):
        self.split = split
        self.seed = seed
        self.gzip_json = gzip_json
        self.url = None
        self.requests = []
        self.connections = 0
        self._queue = collections.deque()
        self._lock = threading.Lock()
        self._sockets = set()
        self._server = None

    # lifecycle
    def start(self):
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.url = "http://127.0.0.1:%d" % self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-upstream",
                         daemon=True).start()
        return self

    def stop(self):
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:  # drop idle keep-alive connections too
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # scripting
    def enqueue(self, reply):
        with self._lock:
            self._queue.append(reply)

    def _dequeue(self):
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def _record(self, rec):
        with self._lock:
            self.requests.append(rec)

    def _connected(self, sock, up):
        with self._lock:
            if up:
                self.connections += 1
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    # default replies
    def stream_chunks(self, data):
        """SSE body -> HTTP chunks: one per event, or random cuts when `split` is set."""
        if self.split:
            return random_chunks(data, self.split, self.seed)
        return sse_events(data)

    def _json(self, obj, headers, req_headers, status=200):
        body = obj if isinstance(obj, bytes) else _dumps(obj)
        gz = self.gzip_json and "gzip" in req_headers.get("accept-encoding", "").lower()
        return Reply(status, [("content-type", JSON_TYPE)] + headers, body, gzip=gz)

    def _sse(self, data, headers):
        return Reply(200, [("content-type", SSE_TYPE), ("cache-control", "no-cache")] + headers,
                     chunks=self.stream_chunks(data))

    def default_reply(self, rec):
        """The Reply sent for `rec` (a Recorded) when nothing is enqueued."""
        url = urlsplit(rec.path)
        path, query = url.path.rstrip("/"), parse_qs(url.query)
        method = "GET" if rec.method == "HEAD" else rec.method
        hdrs = {n.lower(): v for n, v in rec.headers}
        try:
            req = json.loads(rec.body)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            req = {}
        model = req.get("model") if isinstance(req.get("model"), str) else ""
        stream = req.get("stream") is True
        anth = [("request-id", _rid("req_fake")), ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "49")]
        oai = [("x-request-id", _rid()), ("x-ratelimit-remaining-requests", "499"),
               ("openai-processing-ms", "12")]

        if path.endswith("/echo"):
            return self._json({"method": rec.method, "path": rec.path, "headers": [list(h) for h in rec.headers],
                               "body_len": len(rec.body)}, [], {})
        if path.endswith("/big"):
            n = int(query.get("n", ["0"])[0])
            block = bytes(range(256)) * 256
            return Reply(200, [("content-type", "application/octet-stream")], (block * (n // len(block) + 1))[:n])
        if path.endswith("/sse"):
            return Reply(200, [("content-type", SSE_TYPE)], chunks=_bench_events(
                int(query.get("events", ["10"])[0]), int(query.get("size", ["64"])[0]),
                float(query.get("interval", ["0"])[0])))
        if method == "POST":
            if path.endswith("/messages/count_tokens"):
                return self._json({"input_tokens": 2095}, anth, hdrs)
            if path.endswith("/messages"):
                if stream:
                    name = "anthropic_stream_error.sse" if model.startswith("error-") else "anthropic_stream.sse"
                    return self._sse(FIXTURES[name], anth)
                return self._json(FIXTURES["anthropic_nonstream.json"], anth, hdrs)
            if path.endswith("/chat/completions"):
                compat = ("moonshot_chat_stream.sse" if model.startswith("kimi") else
                          "deepseek_chat_stream.sse" if model.startswith("deepseek") else None)
                if stream and compat:
                    return self._sse(FIXTURES[compat], oai)
                if stream:
                    opts = req.get("stream_options")
                    inc = isinstance(opts, dict) and opts.get("include_usage") is True
                    return self._sse(openai_chat_stream_body(inc), oai)
                if compat:
                    return self._json(_compat_nonstream(compat, model), oai, hdrs)
                return self._json(FIXTURES["openai_chat_nonstream.json"], oai, hdrs)
            if path.endswith("/responses"):
                incomplete = model.startswith("incomplete-")
                if stream:
                    data = (responses_incomplete_stream_body() if incomplete
                            else FIXTURES["openai_responses_stream.sse"])
                    return self._sse(data, oai)
                if incomplete:
                    event = json.loads(FIXTURES["openai_responses_incomplete_event.json"])
                    return self._json(event["response"], oai, hdrs)
                return self._json(FIXTURES["openai_responses_nonstream.json"], oai, hdrs)
            if path.endswith("/completions"):
                return self._json({"id": "cmpl-fake01", "object": "text_completion", "created": 1764850000,
                                   "model": model or "gpt-3.5-turbo-instruct",
                                   "choices": [{"text": " Hello there, friend!", "index": 0, "logprobs": None,
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}},
                                  oai, hdrs)
            if path.endswith("/embeddings"):
                return self._json({"object": "list", "data": [{"object": "embedding", "index": 0,
                                                               "embedding": [0.0023, -0.0093, 0.0157]}],
                                   "model": model or "text-embedding-3-small",
                                   "usage": {"prompt_tokens": 8, "total_tokens": 8}}, oai, hdrs)
        elif method == "GET" and path.endswith("/models"):
            if "anthropic-version" in hdrs:
                return self._json({"data": [{"type": "model", "id": "claude-sonnet-4-6",
                                             "display_name": "Claude Sonnet 4.6",
                                             "created_at": "2026-02-17T00:00:00Z"}],
                                   "has_more": False, "first_id": "claude-sonnet-4-6",
                                   "last_id": "claude-sonnet-4-6"}, anth, hdrs)
            return self._json({"object": "list", "data": [
                {"id": m, "object": "model", "created": 1764850000, "owned_by": "openai"}
                for m in ("gpt-5", "gpt-5-mini", "text-embedding-3-small")]}, oai, hdrs)
        elif method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
            return self._json({"method": rec.method, "path": rec.path}, [], hdrs)
        return self._json({"error": {"message": "Invalid URL (%s %s)" % (rec.method, url.path),
                                     "type": "invalid_request_error", "param": None, "code": None}},
                          oai, hdrs, status=404)


def _bench_events(n, size, interval):
    """Generator for /sse: the timestamp is taken right before each chunk is written."""
    for i in range(n):
        if i and interval:
            time.sleep(interval)
        stamp = b"%.9f " % time.perf_counter()
        yield b"data: " + stamp + b"x" * max(0, size - len(stamp)) + b"\n\n"
