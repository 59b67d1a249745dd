"""The relay: bytes in = bytes out, headers, routing, errors, disconnects, pooling, recorder
isolation, several processes on one database and start-up errors.

Every test talks HTTP to a real in-process Token Spy in front of a FakeUpstream
(tests/support.py); nothing in tokenspy.py is mocked except, where said, the store's
insert_turns.
"""

import collections
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import unittest

from tests.fake_upstream import (FIXTURES, Recorded, Reply, anthropic_error, openai_error,
                                 sse_events)
from tests.support import (ROOT, ProxyTestCase, free_port, gunzip, header, header_values,
                           port_of)

ANTHROPIC_HEADERS = [("anthropic-version", "2023-06-01"), ("x-api-key", "sk-ant-test"),
                     ("content-type", "application/json")]
OPENAI_HEADERS = [("authorization", "Bearer sk-test"), ("content-type", "application/json")]
MESSAGES = [{"role": "user", "content": "What's the weather in San Francisco?"}]

# (name, method, path, request body or None, request headers, api logged or None)
ROUTES = [
    ("anthropic stream", "POST", "/v1/messages",
     {"model": "claude-sonnet-4-6", "max_tokens": 256, "stream": True, "messages": MESSAGES},
     ANTHROPIC_HEADERS, "messages"),
    ("anthropic nonstream", "POST", "/v1/messages",
     {"model": "claude-sonnet-4-6", "max_tokens": 256, "messages": MESSAGES}, ANTHROPIC_HEADERS, "messages"),
    ("chat stream", "POST", "/v1/chat/completions",
     {"model": "gpt-5", "stream": True, "stream_options": {"include_usage": True}, "messages": MESSAGES},
     OPENAI_HEADERS, "chat"),
    ("chat nonstream", "POST", "/v1/chat/completions", {"model": "gpt-5", "messages": MESSAGES},
     OPENAI_HEADERS, "chat"),
    ("responses stream", "POST", "/v1/responses", {"model": "gpt-5", "stream": True, "input": "hi"},
     OPENAI_HEADERS, "responses"),
    ("responses nonstream", "POST", "/v1/responses", {"model": "gpt-5", "input": "hi"},
     OPENAI_HEADERS, "responses"),
    ("anthropic models", "GET", "/v1/models", None, ANTHROPIC_HEADERS[:2], None),
    ("openai models", "GET", "/v1/models", None, OPENAI_HEADERS[:1], None),
]
CLIENT_ACCEPT_ENCODING = "gzip, deflate, br, zstd"


def anthropic_stream_body(model="claude-sonnet-4-6"):
    return {"model": model, "max_tokens": 64, "stream": True, "messages": MESSAGES}


# ---------------------------------------------------------------------------------------
# Byte-identical relay
# ---------------------------------------------------------------------------------------

class RelayIdentityTest(ProxyTestCase):
    """Each fixture route through the proxy equals the same reply fetched directly."""

    def test_routes_relay_byte_identical(self):
        metered = 0
        for name, method, path, obj, hdrs, api in ROUTES:
            with self.subTest(route=name):
                headers = list(hdrs) + [("Accept-Encoding", CLIENT_ACCEPT_ENCODING)]
                body = json.dumps(obj).encode() if obj is not None else None
                # Default replies carry random request ids: script one reply, serve it twice.
                reply = self.fake.default_reply(Recorded(method, path, headers, body or b""))
                self.fake.enqueue(reply)
                self.fake.enqueue(reply)
                direct = self.direct(method, path, body, headers)
                proxied = self.request(method, path, body, headers)
                self.assertEqual(direct.status, 200)
                self.assert_same_response(proxied, direct, name)
                self.assertEqual(proxied.body, reply.payload())
                self.check_route_extras(name, path, api, proxied)
                if api is None:
                    continue
                metered += 1
                row = self.rows(expect=metered)[-1]
                self.assertEqual((row["api"], row["path"], row["status"], row["agent"]),
                                 (api, path, 200, "tester"))
                self.assertIsNone(row["error"])
                self.assertEqual(row["usage_source"], "provider")
                self.assertIsNotNone(row["input_tokens"])
                self.assertIsNotNone(row["output_tokens"])
                self.assertEqual(row["response_body_bytes"], len(proxied.body))
                self.assertEqual(row["request_id"], proxied.header("request-id") or proxied.header("x-request-id"))
                if api == "messages":
                    self.assertEqual((row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]),
                                     (472, 10240, 2048))
        self.assertEqual(len(self.rows(expect=6)), 6)   # GET /v1/models is not a turn

    def check_route_extras(self, name, path, api, proxied):
        """Hook for subclasses."""


class RelayIdentitySplitTest(RelayIdentityTest):
    """Same with the fake cutting every stream into 1-byte HTTP chunks."""

    fake_kwargs = {"split": 1}

    def check_route_extras(self, name, path, api, proxied):
        if "stream" in name and "nonstream" not in name:
            self.assertEqual(proxied.header("Transfer-Encoding"), "chunked")


class RelayIdentityGzipTest(RelayIdentityTest):
    """Same with the fake gzipping JSON replies: the client gets the gzip bytes unchanged."""

    fake_kwargs = {"gzip_json": True}

    def check_route_extras(self, name, path, api, proxied):
        forwarded = header_values(self.fake.requests[-1].headers, "accept-encoding")
        self.assertEqual(forwarded, ["gzip, deflate"] if api else [CLIENT_ACCEPT_ENCODING])
        if "stream" in name and "nonstream" not in name:
            self.assertIsNone(proxied.header("Content-Encoding"))
            return
        self.assertEqual(proxied.header("Content-Encoding"), "gzip", name)
        self.assertEqual(proxied.body[:2], b"\x1f\x8b")
        json.loads(gunzip(proxied.body))

    def test_gzip_driven_by_forwarded_accept_encoding(self):
        # No scripted reply: the fake gzips only because the proxy forwarded "gzip".
        resp = self.request("POST", "/v1/messages", ROUTES[1][3],
                            ANTHROPIC_HEADERS + [("Accept-Encoding", CLIENT_ACCEPT_ENCODING)])
        self.assertEqual(resp.header("Content-Encoding"), "gzip")
        self.assertEqual(gunzip(resp.body), FIXTURES["anthropic_nonstream.json"])
        row = self.rows(expect=1)[0]
        self.assertEqual((row["input_tokens"], row["output_tokens"], row["usage_source"]), (472, 89, "provider"))
        self.assertEqual(row["stop_reason"], "tool_use")
        self.assertIsNone(row["error"])


# ---------------------------------------------------------------------------------------
# Request forwarding
# ---------------------------------------------------------------------------------------

class ForwardingTest(ProxyTestCase):

    def forwarded(self):
        return self.fake.requests[-1]

    def test_body_bytes_identical(self):
        odd = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content":
               "e\u0301 \u2028\u2029 \U0001F600\u200d\U0001F4BB \ufeff \u202eevil\u202c \x00 \\ud800 "
               "\u0000\ud7ff\ue000\uffff \U0010FFFF \"q\" \\"}]}
        bodies = [
            json.dumps(odd, ensure_ascii=False).encode("utf-8"),
            json.dumps(odd).encode() + b'  \n',                      # escaped, trailing spaces
            b"\x00\x01\xff\xfe not json at all \r\n\r\n0\r\n\r\n\x80\xc3(",
            b'{"model": "x", "messages": [{"role": "user", "content": "\\ud800 lone"}]}',
            b"",
        ]
        for i, body in enumerate(bodies, 1):
            with self.subTest(i=i):
                resp = self.request("POST", "/v1/messages", body, ANTHROPIC_HEADERS)
                self.assertEqual(resp.status, 200)
                self.assertEqual(self.forwarded().body, body)
                self.assertEqual(header(self.forwarded().headers, "content-length"), str(len(body)))
                self.assertEqual(self.rows(expect=i)[-1]["request_body_bytes"], len(body))

    def test_query_string_kept(self):
        self.request("POST", "/v1/messages?beta=true", ROUTES[1][3], ANTHROPIC_HEADERS)
        self.assertEqual(self.forwarded().path, "/v1/messages?beta=true")
        self.assertEqual(self.rows(expect=1)[0]["path"], "/v1/messages?beta=true")
        self.request("GET", "/v1/models?limit=2&after_id=a%20b", None, ANTHROPIC_HEADERS[:1])
        self.assertEqual(self.forwarded().path, "/v1/models?limit=2&after_id=a%20b")

    def test_end_to_end_headers_kept_hop_by_hop_dropped(self):
        headers = [
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
            ("x-api-key", "sk-ant-secret"),
            ("Authorization", "Bearer sk-other"),
            ("X-Stainless-Lang", "js"),
            ("x-stainless-retry-count", "0"),
            ("anthropic-beta", "interleaved-thinking-2025-05-14"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
            ("X-Secret-Hop", "must not leave the first hop"),
            ("Proxy-Connection", "keep-alive"),
            ("Host", "api.anthropic.com"),
            ("content-type", "application/json"),
        ]
        resp = self.request("POST", "/v1/messages", ROUTES[1][3], headers)
        self.assertEqual(resp.status, 200)
        sent = self.forwarded().headers
        self.assertEqual(header_values(sent, "anthropic-beta"),
                         ["prompt-caching-2024-07-31", "interleaved-thinking-2025-05-14"])
        for name, value in [("x-api-key", "sk-ant-secret"), ("authorization", "Bearer sk-other"),
                            ("x-stainless-lang", "js"), ("x-stainless-retry-count", "0"),
                            ("anthropic-version", "2023-06-01"), ("content-type", "application/json")]:
            self.assertEqual(header_values(sent, name), [value], name)
        names = {k.lower() for k, _ in sent}
        for dropped in ("connection", "keep-alive", "te", "proxy-authorization", "x-secret-hop",
                        "proxy-connection", "transfer-encoding"):
            self.assertNotIn(dropped, names)
        self.assertEqual(header_values(sent, "host"), ["127.0.0.1:%d" % port_of(self.fake.url)])
        # The end-to-end ones in the client's order (Host aside).
        kept = [(k, v) for k, v in headers if k.lower() in
                {"anthropic-version", "anthropic-beta", "x-api-key", "authorization", "x-stainless-lang",
                 "x-stainless-retry-count", "content-type"}]
        self.assertEqual([(k, v) for k, v in sent if k.lower() not in ("host", "content-length")], kept)

    def test_accept_encoding_narrowed_only_on_metered_paths(self):
        hdrs = ANTHROPIC_HEADERS + [("Accept-Encoding", CLIENT_ACCEPT_ENCODING)]
        self.request("POST", "/v1/messages", ROUTES[1][3], hdrs)
        self.assertEqual(header_values(self.forwarded().headers, "accept-encoding"), ["gzip, deflate"])
        self.request("POST", "/v1/chat/completions", ROUTES[3][3],
                     OPENAI_HEADERS + [("Accept-Encoding", "br;q=1.0, gzip;q=0.8, *;q=0.1")])
        self.assertEqual(header_values(self.forwarded().headers, "accept-encoding"), ["gzip;q=0.8"])
        resp = self.request("POST", "/echo", b"{}", [("Accept-Encoding", CLIENT_ACCEPT_ENCODING)])
        self.assertEqual(header_values(self.forwarded().headers, "accept-encoding"), [CLIENT_ACCEPT_ENCODING])
        self.assertIn(["Accept-Encoding", CLIENT_ACCEPT_ENCODING], resp.json()["headers"])
        self.rows(expect=2)                                     # /echo is not metered

    def test_chunked_request_body(self):
        parts = [b'{"model": "claude-sonnet-4-6", ', b'"max_tokens": 8, "messages": ',
                 json.dumps(MESSAGES).encode(), b"", b"}", "\u00e9\U0001F600".encode()[:3]]
        conn = self.connect()
        try:
            conn.request("POST", "/v1/messages", body=iter(parts), encode_chunked=True,
                         headers=dict(ANTHROPIC_HEADERS))
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.read(), FIXTURES["anthropic_nonstream.json"])
        finally:
            conn.close()
        joined = b"".join(parts)
        self.assertEqual(self.forwarded().body, joined)
        self.assertEqual(header_values(self.forwarded().headers, "content-length"), [str(len(joined))])
        self.assertEqual(header_values(self.forwarded().headers, "transfer-encoding"), [])
        self.assertEqual(self.rows(expect=1)[0]["request_body_bytes"], len(joined))

    def test_agent_prefix(self):
        resp = self.request("POST", "/agent/alice.dev-2/v1/messages?beta=true", ROUTES[0][3], ANTHROPIC_HEADERS)
        self.assertEqual(resp.body, FIXTURES["anthropic_stream.sse"])
        self.assertEqual(self.forwarded().path, "/v1/messages?beta=true")
        self.request("POST", "/v1/messages", ROUTES[1][3], ANTHROPIC_HEADERS)
        rows = self.rows(expect=2)
        self.assertEqual([(r["agent"], r["path"]) for r in rows],
                         [("alice.dev-2", "/v1/messages?beta=true"), ("tester", "/v1/messages")])

    def test_invalid_agent_name(self):
        for path in ("/agent/bad%21name/v1/messages", "/agent/.hidden/v1/messages",
                     "/agent/" + "a" * 65 + "/v1/messages", "/agent//v1/messages"):
            with self.subTest(path=path):
                resp = self.request("POST", path, ROUTES[1][3], ANTHROPIC_HEADERS)
                self.assert_error_shape(resp, 400, "api")
        self.assertEqual(self.fake.requests, [])
        self.assertEqual(self.rows(), [])

    def test_upstream_base_path_never_doubles_v1(self):
        cases = [
            (self.fake.url, "/v1/messages", "/v1/messages"),
            (self.fake.url + "/", "/v1/chat/completions", "/v1/chat/completions"),
            (self.fake.url + "/v1", "/v1/messages?beta=true", "/v1/messages?beta=true"),
            (self.fake.url + "/v1/", "/v1/chat/completions", "/v1/chat/completions"),
            (self.fake.url + "/v1", "/v1/models", "/v1/models"),
            (self.fake.url + "/api/v1", "/v1/chat/completions", "/api/v1/chat/completions"),
            (self.fake.url + "/openai", "/v1/responses", "/openai/v1/responses"),
        ]
        for n, (base, path, expected) in enumerate(cases):
            with self.subTest(base=base, path=path):
                self.restart_proxy(["--upstream", base])
                method = "GET" if path.endswith("/models") else "POST"
                body = None if method == "GET" else {"model": "gpt-5"}
                resp = self.request(method, path, body, OPENAI_HEADERS)
                self.assertEqual(resp.status, 200, resp.body[:200])
                self.assertEqual(self.forwarded().path, expected)
                self.assertNotIn("/v1/v1", self.forwarded().path)


# ---------------------------------------------------------------------------------------
# Routing between two upstreams
# ---------------------------------------------------------------------------------------

class RoutingTest(ProxyTestCase):

    def proxy_args(self):
        self.openai_fake = self.new_fake()
        return ["--anthropic-upstream", self.fake.url, "--openai-upstream", self.openai_fake.url]

    def test_paths_and_headers_pick_the_upstream(self):
        anth, oai = self.fake, self.openai_fake
        cases = [
            ("POST", "/v1/messages", ROUTES[1][3], ANTHROPIC_HEADERS, anth),
            ("POST", "/v1/messages?beta=true", ROUTES[0][3], ANTHROPIC_HEADERS, anth),
            ("POST", "/v1/messages/count_tokens", ROUTES[1][3], ANTHROPIC_HEADERS, anth),
            ("POST", "/v1/messages", ROUTES[1][3], [("x-api-key", "k")], anth),   # path decides
            ("POST", "/v1/chat/completions", ROUTES[3][3], OPENAI_HEADERS, oai),
            ("POST", "/v1/chat/completions", ROUTES[3][3], ANTHROPIC_HEADERS, oai),  # path decides
            ("POST", "/v1/responses", ROUTES[5][3], OPENAI_HEADERS, oai),
            ("GET", "/v1/models", None, [("anthropic-version", "2023-06-01")], anth),
            ("GET", "/v1/models", None, OPENAI_HEADERS, oai),
            ("GET", "/v1/files/abc", None, [("anthropic-version", "2023-06-01")], anth),
            ("GET", "/v1/files/abc", None, [], oai),
        ]
        for method, path, body, headers, target in cases:
            with self.subTest(method=method, path=path, headers=headers):
                before = (len(anth.requests), len(oai.requests))
                self.request(method, path, body, headers)
                after = (len(anth.requests), len(oai.requests))
                expected = (before[0] + 1, before[1]) if target is anth else (before[0], before[1] + 1)
                self.assertEqual(after, expected)
                self.assertEqual(target.requests[-1].path, path)
        rows = self.rows(expect=6)
        self.assertEqual([(r["provider"], r["upstream"]) for r in rows],
                         [("anthropic", anth.url)] * 3 + [("openai", oai.url)] * 3)

    def test_own_paths_never_forwarded(self):
        for method, path, status in [("GET", "/health", 200), ("GET", "/api/usage", 200),
                                     ("GET", "/api/usage?hours=1", 200), ("GET", "/api/summary", 200),
                                     ("GET", "/token-usage", 200), ("GET", "/api/nope", 404),
                                     ("POST", "/api/usage", 405), ("POST", "/health", 405),
                                     ("GET", "/agent/bob/health", 200)]:
            with self.subTest(method=method, path=path):
                resp = self.request(method, path, b"{}" if method == "POST" else None,
                                    [("anthropic-version", "2023-06-01")])
                self.assertEqual(resp.status, status, resp.body[:300])
                self.assertIn("application/json", resp.header("content-type"))
        health = self.request("GET", "/health").json()
        self.assertEqual(health["status"], "ok")
        self.assertEqual((self.fake.requests, self.openai_fake.requests), ([], []))
        self.assertEqual(self.rows(), [])


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

class ErrorTest(ProxyTestCase):

    def test_upstream_429_on_stream(self):
        reply = openai_error(429, "rate_limit_exceeded", "Rate limit reached for gpt-5 in organization org-x",
                             retry_after=20)
        self.fake.enqueue(reply)
        self.fake.enqueue(reply)
        body = ROUTES[2][3]
        direct = self.direct("POST", "/v1/chat/completions", body, OPENAI_HEADERS)
        resp = self.request("POST", "/v1/chat/completions", body, OPENAI_HEADERS)
        self.assert_same_response(resp, direct)
        self.assertEqual(resp.status, 429)
        self.assertEqual(resp.body, reply.body)
        self.assertEqual(resp.header("retry-after"), "20")
        self.assertEqual(resp.header("x-request-id"), header(reply.headers, "x-request-id"))
        row = self.rows(expect=1)[0]
        self.assertEqual((row["status"], row["stream"], row["api"]), (429, 1, "chat"))
        self.assertIn("Rate limit reached", row["error"] or "")
        self.assertEqual(row["request_id"], header(reply.headers, "x-request-id"))
        self.assert_no_tokens(row)

    def test_upstream_529_on_stream(self):
        reply = anthropic_error(529, "overloaded_error", "Overloaded", retry_after=3)
        self.fake.enqueue(reply)
        self.fake.enqueue(reply)
        direct = self.direct("POST", "/v1/messages", anthropic_stream_body(), ANTHROPIC_HEADERS)
        resp = self.request("POST", "/v1/messages", anthropic_stream_body(), ANTHROPIC_HEADERS)
        self.assert_same_response(resp, direct)
        self.assertEqual((resp.status, resp.reason), (529, "Overloaded"))
        self.assertEqual(resp.body, reply.body)
        self.assertEqual(resp.header("request-id"), header(reply.headers, "request-id"))
        self.assertEqual(resp.header("retry-after"), "3")
        row = self.rows(expect=1)[0]
        self.assertEqual((row["status"], row["stream"]), (529, 1))
        self.assertEqual(row["error"], "overloaded_error: Overloaded")
        self.assertEqual(row["request_id"], header(reply.headers, "request-id"))
        self.assert_no_tokens(row)

    def assert_no_tokens(self, row):
        for col in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                    "reasoning_tokens", "estimated_cost_usd", "usage_raw"):
            self.assertIsNone(row[col], col)
        self.assertEqual(row["usage_source"], "missing")

    def test_upstream_refused(self):
        dead = "http://127.0.0.1:%d" % free_port()
        self.restart_proxy(["--upstream", dead])
        t0 = time.perf_counter()
        anth = self.request("POST", "/v1/messages", anthropic_stream_body(), ANTHROPIC_HEADERS)
        obj = self.assert_error_shape(anth, 502, "anthropic")
        self.assertEqual(obj["error"]["type"], "api_error")
        oai = self.request("POST", "/v1/chat/completions", ROUTES[2][3], OPENAI_HEADERS)
        obj = self.assert_error_shape(oai, 502, "openai")
        self.assertEqual(obj["error"]["code"], "upstream_unreachable")
        self.assertLess(time.perf_counter() - t0, 2.0)
        rows = self.rows(expect=2)
        self.assertEqual([(r["api"], r["status"]) for r in rows], [("messages", 502), ("chat", 502)])
        for row in rows:
            self.assertIn("cannot reach upstream", row["error"] or "")
            self.assertEqual(row["upstream"], dead)
            self.assertIsNone(row["input_tokens"])

    def test_upstream_timeout(self):
        self.restart_proxy(["--upstream", self.fake.url, "--timeout", "0.5"])
        for path, body, headers, shape, kind in [
                ("/v1/messages", anthropic_stream_body(), ANTHROPIC_HEADERS, "anthropic", "timeout_error"),
                ("/v1/chat/completions", ROUTES[3][3], OPENAI_HEADERS, "openai", "upstream_timeout")]:
            with self.subTest(path=path):
                self.fake.enqueue(Reply(hang=1.5))
                t0 = time.perf_counter()
                resp = self.request("POST", path, body, headers)
                elapsed = time.perf_counter() - t0
                obj = self.assert_error_shape(resp, 504, shape)
                self.assertEqual(obj["error"].get("type") if shape == "anthropic" else obj["error"]["code"], kind)
                self.assertGreaterEqual(elapsed, 0.45)
                self.assertLess(elapsed, 1.2)
        rows = self.rows(expect=2)
        for row in rows:
            self.assertEqual(row["status"], 504)
            self.assertIn("did not answer", row["error"] or "")

    def test_upstream_truncates_content_length_body(self):
        # The upstream promises Content-Length bytes, sends fewer and closes: the client must
        # see the connection end (not wait for bytes that never come) and the row an error.
        full = FIXTURES["anthropic_nonstream.json"]
        self.fake.enqueue(Reply(200, [("content-type", "application/json"), ("Content-Length", str(len(full)))],
                                full[:300], close=True))
        conn = self.connect(timeout=1.5)
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/messages", json.dumps(ROUTES[1][3]), dict(ANTHROPIC_HEADERS))
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            try:
                resp.read()
                self.fail("a body shorter than its Content-Length was relayed as complete")
            except http.client.IncompleteRead:
                pass
            except socket.timeout:
                self.fail("the client was left waiting for bytes the upstream never sent")
        finally:
            conn.close()
        self.assertLess(time.perf_counter() - t0, 1.0)
        row = self.rows(expect=1)[0]
        self.assertIn("mid-response", row["error"] or "")
        self.assertEqual(row["response_body_bytes"], 300)

    def test_anthropic_mid_stream_error(self):
        resp = self.request("POST", "/v1/messages", anthropic_stream_body("error-claude"), ANTHROPIC_HEADERS)
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.body, FIXTURES["anthropic_stream_error.sse"])
        row = self.rows(expect=1)[0]
        self.assertEqual(row["status"], 200)
        self.assertEqual(row["error"], "overloaded_error: Overloaded")
        self.assertEqual(row["usage_source"], "partial")
        self.assertEqual((row["input_tokens"], row["output_tokens"]), (25, 1))


# ---------------------------------------------------------------------------------------
# Connections: client disconnect, keep-alive, WebSocket upgrade
# ---------------------------------------------------------------------------------------

class ConnectionTest(ProxyTestCase):

    def test_client_disconnect_mid_stream(self):
        events = sse_events(FIXTURES["anthropic_stream.sse"])
        ping = b'event: ping\ndata: {"type": "ping"}\n\n'
        self.fake.enqueue(Reply(200, [("content-type", "text/event-stream; charset=utf-8"),
                                      ("request-id", "req_disconnect")],
                                chunks=events[:1] + [ping] * 150 + events[1:], chunk_delay=0.02))
        body = json.dumps(anthropic_stream_body()).encode()
        sock = socket.create_connection(("127.0.0.1", self.app.port), timeout=5)
        try:
            sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nanthropic-version: 2023-06-01\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            got = b""
            while b"message_start" not in got or b'"type": "ping"' not in got:
                data = sock.recv(4096)
                self.assertTrue(data, "proxy closed early")
                got += data
            self.assertTrue(got.startswith(b"HTTP/1.1 200 "))
        finally:
            sock.close()
        t0 = time.perf_counter()
        row = self.rows(expect=1, timeout=3)[0]
        self.assertLess(time.perf_counter() - t0, 2.0)     # noticed at the next chunk, not at the end
        self.assertTrue((row["error"] or "").startswith("client disconnected"), row["error"])
        self.assertEqual(row["status"], 200)
        self.assertEqual((row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]), (472, 10240, 3))
        self.assertEqual(row["usage_source"], "partial")
        self.assertEqual(row["request_id"], "req_disconnect")
        # The half-read upstream connection was closed, not pooled: the next turn opens a new one.
        self.assertEqual(self.app.upstreams["anthropic"]._idle, [])
        self.assertEqual(self.fake.connections, 1)
        resp = self.request("POST", "/v1/messages", anthropic_stream_body(), ANTHROPIC_HEADERS)
        self.assertEqual(resp.body, FIXTURES["anthropic_stream.sse"])
        self.assertEqual(self.fake.connections, 2)
        self.assertEqual(len(self.fake.requests), 2)

    def test_keep_alive_both_sides(self):
        conn = self.connect()
        socks = []
        try:
            for name, method, path, obj, hdrs, _ in ROUTES[:5] + ROUTES[6:7]:
                resp = self.request(method, path, obj, hdrs, conn=conn)
                self.assertEqual(resp.status, 200, name)
                self.assertIsNone(resp.header("Connection"), name)
                self.assertIsNotNone(conn.sock, "client connection closed after %s" % name)
                socks.append((conn.sock, conn.sock.getsockname()))
        finally:
            conn.close()
        self.assertEqual(len(socks), 6)
        self.assertTrue(all(s is socks[0][0] and n == socks[0][1] for s, n in socks))
        self.assertEqual(self.fake.connections, 1)
        self.assertEqual(len(self.fake.requests), 6)
        self.rows(expect=5)

    def test_websocket_upgrade_refused_at_once(self):
        sock = socket.create_connection(("127.0.0.1", self.app.port), timeout=3)
        t0 = time.perf_counter()
        try:
            sock.sendall(b"GET /v1/responses HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                         b"Authorization: Bearer sk-test\r\n\r\n")
            data = b""
            while True:
                got = sock.recv(65536)
                if not got:
                    break                       # the proxy closed the connection
                data += got
        finally:
            sock.close()
        self.assertLess(time.perf_counter() - t0, 1.0)
        status_line = data.split(b"\r\n", 1)[0]
        self.assertTrue(status_line.startswith(b"HTTP/1.1 "), data[:200])
        self.assertNotEqual(int(status_line.split()[1]), 101)
        self.assertGreaterEqual(int(status_line.split()[1]), 400)
        json.loads(data.partition(b"\r\n\r\n")[2])
        self.assertEqual(self.fake.requests, [])
        self.assertEqual(self.fake.connections, 0)


# ---------------------------------------------------------------------------------------
# The relay never waits on the recorder
# ---------------------------------------------------------------------------------------

class OddClientInputTest(ProxyTestCase):
    """Malformed client input gets a clear answer and is never relayed half-read."""

    def raw(self, data, timeout=5):
        sock = socket.create_connection(("127.0.0.1", self.app.port), timeout=timeout)
        try:
            sock.sendall(data)
            out = b""
            while True:
                try:
                    piece = sock.recv(65536)
                except socket.timeout:
                    break
                if not piece:
                    break
                out += piece
                if b"\r\n\r\n" in out and out.count(b"}") >= 1:
                    break
            return out
        finally:
            sock.close()

    def test_negative_chunk_size_is_refused(self):
        t0 = time.perf_counter()
        out = self.raw(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nanthropic-version: 2023-06-01\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:200])
        self.assertIn(b"malformed chunked", out)
        self.assertLess(time.perf_counter() - t0, 2.0)
        self.assertEqual(self.fake.requests, [])

    def test_header_http_client_cannot_send_is_a_502_and_logged(self):
        out = self.raw(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nanthropic-version: 2023-06-01\r\n"
                       b"X-Caf\xe9: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        self.assertTrue(out.startswith(b"HTTP/1.1 502"), out[:200])
        row = self.rows(expect=1)[0]
        self.assertEqual(row["status"], 502)
        self.assertIn("cannot reach upstream", row["error"])


class RecorderIsolationTest(ProxyTestCase):

    def five_requests(self):
        t0 = time.perf_counter()
        for i in range(5):
            name, method, path, obj, hdrs, _ = ROUTES[i % 2]
            resp = self.request(method, path, obj, hdrs)
            self.assertEqual(resp.status, 200)
            expected = FIXTURES["anthropic_stream.sse" if i % 2 == 0 else "anthropic_nonstream.json"]
            self.assertEqual(resp.body, expected)
        return time.perf_counter() - t0

    def test_slow_database_does_not_slow_the_relay(self):
        store, original = self.app.store, self.app.store.insert_turns
        release, calls = threading.Event(), []

        def slow_insert(rows, *args, **kwargs):
            calls.append(len(rows))
            release.wait(2.0)                   # a 2 s stall, cut short once measured
            return original(rows, *args, **kwargs)

        store.insert_turns = slow_insert
        try:
            self.request("GET", "/health")      # warm up
            self.request(*ROUTES[1][1:5])       # one turn, so the recorder is stuck in its write
            deadline = time.time() + 2
            while not calls and time.time() < deadline:
                time.sleep(0.005)
            elapsed = self.five_requests()
            stalled = bool(calls) and self.db_count() == 0
        finally:
            release.set()
        self.assertTrue(stalled, "the recorder was not stalled in insert_turns during the requests")
        self.assertLess(elapsed, 0.5)
        self.assertEqual(len(self.rows(expect=6)), 6)

    def test_single_write_failure_loses_nothing(self):
        store, original = self.app.store, self.app.store.insert_turns
        done, calls = threading.Event(), []

        def flaky_insert(rows, *args, **kwargs):
            calls.append(len(rows))
            if len(calls) == 1:
                done.wait(2.0)                  # fail only once the other four are queued
                raise OSError("disk I/O error (simulated)")
            return original(rows, *args, **kwargs)

        store.insert_turns = flaky_insert
        elapsed = self.five_requests()
        done.set()
        self.assertLess(elapsed, 0.5)
        rows = self.rows(expect=5, timeout=3)
        self.assertEqual([r["path"] for r in rows], ["/v1/messages"] * 5)
        self.assertGreaterEqual(len(calls), 2)

    def test_rows_written_after_database_outage_ends(self):
        store, original = self.app.store, self.app.store.insert_turns
        down, calls = [True], []

        def insert(rows, *args, **kwargs):
            calls.append(len(rows))
            if down[0]:
                raise OSError("database is unavailable (simulated)")
            return original(rows, *args, **kwargs)

        store.insert_turns = insert
        elapsed = self.five_requests()
        self.assertLess(elapsed, 0.5)
        # Wait until the recorder has taken all five flows, failed to write them and gone
        # back to waiting for work (its queue is fully processed).
        recorder, deadline = self.app.recorder, time.time() + 3.0
        while not (calls and calls[-1] == 5 and recorder.queue.unfinished_tasks == 0) and time.time() < deadline:
            time.sleep(0.01)
        self.assertEqual((calls[-1:], recorder.queue.unfinished_tasks), ([5], 0), "the recorder never tried to write")
        self.assertEqual(self.db_count(), 0)
        down[0] = False                          # the database is back; no more traffic
        deadline = time.time() + 3.0
        while self.db_count() < 5 and time.time() < deadline:
            time.sleep(0.02)
        count_without_traffic = self.db_count()
        # One more turn wakes the recorder up (also keeps tearDown's flush from waiting 10 s).
        self.request(*[ROUTES[1][i] for i in (1, 2, 3, 4)])
        self.assertEqual(count_without_traffic, 5,
                         "rows kept after a failed write are only retried when a new turn arrives")
        self.assertEqual(len(self.rows(expect=6)), 6)


# ---------------------------------------------------------------------------------------
# Processes: several Token Spies on one database; start-up errors
# ---------------------------------------------------------------------------------------

def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSPY_")}
    for name in ("PORT", "AGENT_NAME", "UPSTREAM_BASE_URL", "ANTHROPIC_UPSTREAM", "OPENAI_UPSTREAM",
                 "DB_PATH", "LOG_LEVEL", "STATE_DIRECTORY", "LOCAL_MODEL_AGENTS", "AGENT_SESSION_DIRS"):
        env.pop(name, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def read_text(path):
    with open(path, errors="replace") as fh:
        return fh.read()


class ProcessTest(ProxyTestCase):

    def test_three_processes_share_one_database(self):
        procs, logs, ports = [], [], []
        try:
            for n in (1, 2, 3):
                log_path = os.path.join(self.tmpdir, "a%d.log" % n)
                logs.append(log_path)
                with open(log_path, "wb") as err:
                    procs.append(subprocess.Popen(
                        [sys.executable, os.path.join(ROOT, "tokenspy.py"), "--port", str(free_port()),
                         "--db", self.db, "--upstream", self.fake.url, "--agent", "a%d" % n],
                        cwd=self.tmpdir, env=clean_env(), stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=err))
            deadline = time.time() + 10
            for proc, log_path in zip(procs, logs):
                port = None
                while port is None and time.time() < deadline:
                    self.assertIsNone(proc.poll(), read_text(log_path))
                    m = re.search(r"on http://127\.0\.0\.1:(\d+)", read_text(log_path))
                    port = int(m.group(1)) if m else time.sleep(0.02)
                self.assertIsNotNone(port, "a Token Spy process did not start")
                ports.append(port)

            errors = []

            def client(port, k):
                conn = self.connect(port)
                try:
                    for i in range(6):
                        name, method, path, obj, hdrs, _ = ROUTES[(k + i) % 6]
                        resp = self.request(method, path, obj, hdrs, conn=conn)
                        if resp.status != 200 or not resp.body:
                            errors.append((port, name, resp.status))
                except Exception as exc:  # reported below
                    errors.append((port, repr(exc)))
                finally:
                    conn.close()

            threads = [threading.Thread(target=client, args=(port, k)) for port in ports for k in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
            self.assertEqual(errors, [])
            deadline = time.time() + 8
            while self.db_count() < 90 and time.time() < deadline:
                time.sleep(0.05)
            rows = self.rows()
            self.assertEqual(len(rows), 90)
            self.assertEqual(collections.Counter(r["agent"] for r in rows), {"a1": 30, "a2": 30, "a3": 30})
            self.assertEqual(collections.Counter(r["api"] for r in rows),
                             {"messages": 30, "chat": 30, "responses": 30})
            self.assertTrue(all(r["status"] == 200 and r["input_tokens"] is not None for r in rows))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(2)       # SIGINT: Token Spy's clean shutdown
            for proc in procs:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log_path in logs:
            text = read_text(log_path)
            self.assertNotIn("database write failed", text)
            self.assertNotIn("Traceback", text)


class StartupErrorTest(unittest.TestCase):

    def run_tokenspy(self, *args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "tokenspy.py")] + list(args),
                              cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)

    def test_unknown_flag(self):
        proc = self.run_tokenspy("--bogus")
        err = proc.stderr.decode()
        self.assertNotEqual(proc.returncode, 0)
        self.assertNotIn("Traceback", err)
        self.assertTrue(err.startswith("usage: tokenspy.py"), err)
        self.assertIn("error: unrecognized arguments: --bogus", err)
        self.assertEqual(proc.stdout, b"")

    def test_bad_db_and_upstream(self):
        for args in (["--db", "/nonexistent/dir/x.db", "--port", "0"],
                     ["--upstream", "ftp://x", "--port", "0"]):
            with self.subTest(args=args):
                proc = self.run_tokenspy(*args)
                err = proc.stderr.decode()
                self.assertNotEqual(proc.returncode, 0)
                self.assertNotIn("Traceback", err)
                lines = err.strip().splitlines()
                self.assertEqual(len(lines), 1, err)
                self.assertTrue(lines[0].startswith("tokenspy: error: "), err)
                self.assertIn(args[1], lines[0])
                self.assertEqual(proc.stdout, b"")


if __name__ == "__main__":
    unittest.main()
