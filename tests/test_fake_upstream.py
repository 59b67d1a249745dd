"""Tests for tests/fake_upstream.py itself, talking to it directly with http.client and raw sockets."""

import gzip
import http.client
import json
import socket
import time
import unittest

from tests.fake_upstream import (FIXTURES, FakeUpstream, Reply, anthropic_error, openai_chat_stream_body,
                                 openai_error, sse_events)


def raw_exchange(fake, request_bytes):
    """Send raw bytes with Connection: close; return (status_line, headers list, chunk list or None, body)."""
    port = int(fake.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request_bytes)
        data = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            data += got
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    if ("Transfer-Encoding", "chunked") not in headers:
        return lines[0], headers, None, rest
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]
    return lines[0], headers, chunks, b"".join(chunks)


def raw_post(fake, path, obj):
    body = json.dumps(obj).encode()
    return raw_exchange(fake, b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json"
                              b"\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))


class FakeUpstreamTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeUpstream().start()
        self.conn = http.client.HTTPConnection("127.0.0.1", int(self.fake.url.rsplit(":", 1)[1]), timeout=5)

    def tearDown(self):
        self.conn.close()
        self.fake.stop()

    def call(self, method, path, obj=None, headers=None, raw=None):
        body = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else None)
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        return resp, resp.read()

    # ------------------------------------------------------------ default routes
    def test_fixtures_loaded(self):
        self.assertEqual(len(FIXTURES), 12)
        self.assertTrue(FIXTURES["anthropic_stream.sse"].startswith(b"event: message_start\n"))

    def test_anthropic_nonstream(self):
        resp, body = self.call("POST", "/v1/messages?beta=true", {"model": "claude-sonnet-4-6"})
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, FIXTURES["anthropic_nonstream.json"])
        self.assertEqual(resp.getheader("content-type"), "application/json")
        self.assertTrue(resp.getheader("request-id").startswith("req_fake"))
        self.assertEqual(resp.getheader("anthropic-ratelimit-requests-remaining"), "49")
        resp2, _ = self.call("POST", "/v1/messages", {"model": "x"})
        self.assertNotEqual(resp.getheader("request-id"), resp2.getheader("request-id"))

    def test_anthropic_stream_one_chunk_per_event(self):
        status, headers, chunks, body = raw_post(self.fake, "/v1/messages", {"model": "m", "stream": True})
        self.assertIn("200", status)
        self.assertIn(("content-type", "text/event-stream; charset=utf-8"), headers)
        self.assertEqual(body, FIXTURES["anthropic_stream.sse"])
        self.assertEqual(chunks, sse_events(FIXTURES["anthropic_stream.sse"]))
        self.assertEqual(len(chunks), 17)

    def test_anthropic_stream_error_model(self):
        _, body = self.call("POST", "/v1/messages", {"model": "error-claude", "stream": True})
        self.assertEqual(body, FIXTURES["anthropic_stream_error.sse"])

    def test_split_random_chunks(self):
        self.fake.stop()
        self.fake = FakeUpstream(split=7, seed=3).start()
        for name, path, obj in [
                ("anthropic_stream.sse", "/v1/messages", {"stream": True}),
                ("openai_responses_stream.sse", "/v1/responses", {"stream": True}),
                ("deepseek_chat_stream.sse", "/v1/chat/completions", {"model": "deepseek-v4-pro", "stream": True}),
                ("moonshot_chat_stream.sse", "/v1/chat/completions", {"model": "kimi-k2.6", "stream": True})]:
            _, _, chunks, body = raw_post(self.fake, path, obj)
            self.assertEqual(body, FIXTURES[name], name)
            self.assertTrue(all(1 <= len(c) <= 7 for c in chunks))
            self.assertGreater(len(chunks), len(FIXTURES[name]) // 7)

    def test_count_tokens(self):
        resp, body = self.call("POST", "/v1/messages/count_tokens", {"model": "m"})
        self.assertEqual(json.loads(body), {"input_tokens": 2095})

    def test_openai_chat(self):
        resp, body = self.call("POST", "/v1/chat/completions", {"model": "gpt-5"})
        self.assertEqual(body, FIXTURES["openai_chat_nonstream.json"])
        self.assertTrue(resp.getheader("x-request-id").startswith("req_"))
        self.assertEqual(resp.getheader("openai-processing-ms"), "12")
        resp, body = self.call("POST", "/v1/chat/completions", raw=b"not json{")
        self.assertEqual(body, FIXTURES["openai_chat_nonstream.json"])

    def test_openai_include_usage_removal(self):
        full = FIXTURES["openai_chat_stream.sse"]
        _, body = self.call("POST", "/v1/chat/completions",
                            {"model": "gpt-5", "stream": True, "stream_options": {"include_usage": True}})
        self.assertEqual(body, full)
        _, body = self.call("POST", "/v1/chat/completions", {"model": "gpt-5", "stream": True})
        self.assertEqual(body, openai_chat_stream_body(False))
        self.assertNotIn(b'"choices":[]', body)
        self.assertEqual(len(sse_events(body)), len(sse_events(full)) - 1)
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"))

    def test_compat_streams_and_nonstream(self):
        _, body = self.call("POST", "/v1/chat/completions", {"model": "kimi-k2.6", "stream": True})
        self.assertEqual(body, FIXTURES["moonshot_chat_stream.sse"])
        _, body = self.call("POST", "/v1/chat/completions", {"model": "deepseek-v4-pro", "stream": True})
        self.assertEqual(body, FIXTURES["deepseek_chat_stream.sse"])
        _, body = self.call("POST", "/v1/chat/completions", {"model": "deepseek-v4-pro"})
        obj = json.loads(body)
        self.assertEqual((obj["model"], obj["usage"]["prompt_cache_hit_tokens"]), ("deepseek-v4-pro", 1152))
        self.assertEqual(obj["choices"][0]["message"]["content"], "Hi!")
        _, body = self.call("POST", "/v1/chat/completions", {"model": "kimi-k2.6"})
        self.assertEqual(json.loads(body)["usage"]["cached_tokens"], 1024)

    def test_responses(self):
        _, body = self.call("POST", "/v1/responses", {"model": "gpt-5"})
        self.assertEqual(body, FIXTURES["openai_responses_nonstream.json"])
        _, body = self.call("POST", "/v1/responses", {"model": "gpt-5", "stream": True})
        self.assertEqual(body, FIXTURES["openai_responses_stream.sse"])
        _, body = self.call("POST", "/v1/responses", {"model": "incomplete-gpt-5", "stream": True})
        last = sse_events(body)[-1]
        self.assertTrue(last.startswith(b"event: response.incomplete\ndata: "))
        event = json.loads(last.split(b"data: ", 1)[1])
        self.assertEqual((event["response"]["usage"]["total_tokens"], event["sequence_number"]), (2247, 11))
        self.assertNotIn(b"response.completed", body)
        _, body = self.call("POST", "/v1/responses", {"model": "incomplete-gpt-5"})
        self.assertEqual(json.loads(body)["status"], "incomplete")

    def test_misc_routes(self):
        _, body = self.call("POST", "/v1/completions", {"model": "gpt-3.5-turbo-instruct"})
        self.assertEqual(json.loads(body)["usage"]["total_tokens"], 12)
        _, body = self.call("POST", "/v1/embeddings", {"model": "e"})
        self.assertEqual(json.loads(body)["usage"], {"prompt_tokens": 8, "total_tokens": 8})
        resp, body = self.call("GET", "/v1/models")
        self.assertEqual(resp.status, 200)
        self.assertEqual(json.loads(body)["object"], "list")
        resp, _ = self.call("HEAD", "/v1/models")
        self.assertEqual(int(resp.getheader("content-length")), len(body))
        resp, body = self.call("GET", "/v1/nope")
        self.assertEqual(resp.status, 404)
        self.assertEqual(json.loads(body)["error"]["type"], "invalid_request_error")
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
            resp, body = self.call(method, "/v1/thing")
            self.assertEqual((resp.status, json.loads(body)), (200, {"method": method, "path": "/v1/thing"}))

    def test_echo_big_sse(self):
        resp, body = self.call("POST", "/echo?q=1", raw=b"abc", headers={"X-Dup": "1", "Content-Type": "text/plain"})
        obj = json.loads(body)
        self.assertEqual((obj["method"], obj["path"], obj["body_len"]), ("POST", "/echo?q=1", 3))
        self.assertIn(["X-Dup", "1"], obj["headers"])
        _, body = self.call("GET", "/big?n=100000")
        self.assertEqual(len(body), 100000)
        _, headers, chunks, _ = raw_exchange(self.fake, b"GET /sse?events=3&size=40&interval=0.01 HTTP/1.1\r\n"
                                                        b"Host: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(len(chunks), 3)
        for c in chunks:
            self.assertEqual(len(c), len(b"data: \n\n") + 40)
            self.assertLess(time.perf_counter() - float(c[6:].split()[0]), 5)

    def test_gzip_json(self):
        self.fake.gzip_json = True
        resp, body = self.call("POST", "/v1/messages", {"model": "m"}, headers={"Accept-Encoding": "gzip, deflate"})
        self.assertEqual(resp.getheader("content-encoding"), "gzip")
        self.assertEqual(int(resp.getheader("content-length")), len(body))
        self.assertEqual(gzip.decompress(body), FIXTURES["anthropic_nonstream.json"])
        resp, body = self.call("POST", "/v1/messages", {"model": "m"})  # no Accept-Encoding: gzip
        self.assertIsNone(resp.getheader("content-encoding"))
        self.assertEqual(body, FIXTURES["anthropic_nonstream.json"])

    # ------------------------------------------------------------ scripting
    def test_enqueue_order_and_errors(self):
        self.fake.enqueue(anthropic_error(529, "overloaded_error", "Overloaded", retry_after=3))
        self.fake.enqueue(openai_error(429, "rate_limit_exceeded", "slow down"))
        self.fake.enqueue(Reply(201, [("x-a", "1"), ("x-a", "2")], b"hi", gzip=True))
        resp, body = self.call("POST", "/v1/chat/completions", {})
        self.assertEqual((resp.status, resp.getheader("retry-after"), resp.getheader("x-should-retry")),
                         (529, "3", "false"))
        obj = json.loads(body)
        self.assertEqual(set(obj), set(json.loads(FIXTURES["anthropic_529.json"])))
        self.assertEqual(obj["request_id"], resp.getheader("request-id"))
        resp, body = self.call("POST", "/v1/messages", {})
        self.assertEqual(resp.status, 429)
        self.assertEqual(json.loads(body)["error"].keys(), json.loads(FIXTURES["openai_429.json"])["error"].keys())
        resp, body = self.call("GET", "/anything")
        self.assertEqual((resp.status, resp.headers.get_all("x-a"), gzip.decompress(body)), (201, ["1", "2"], b"hi"))
        resp, _ = self.call("GET", "/anything")
        self.assertEqual(resp.status, 404)  # queue drained: back to defaults

    def test_chunked_reply_delay_and_close(self):
        self.fake.enqueue(Reply(chunks=[b"a", b"", b"bc"], chunk_delay=0.01, delay=0.01, close=True))
        resp, body = self.call("GET", "/x")
        self.assertEqual((body, resp.getheader("connection")), (b"abc", "close"))
        self.call("GET", "/v1/models")  # http.client reconnects after close
        self.assertEqual(self.fake.connections, 2)

    def test_hang(self):
        self.fake.enqueue(Reply(hang=0.05))
        start = time.monotonic()
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            self.call("GET", "/x")
        self.assertGreaterEqual(time.monotonic() - start, 0.05)

    # ------------------------------------------------------------ transport
    def test_keep_alive(self):
        self.call("POST", "/v1/messages", {"model": "m"})
        self.call("POST", "/v1/messages", {"model": "m", "stream": True})
        self.call("GET", "/v1/models")
        self.assertEqual(self.fake.connections, 1)
        self.assertEqual([r.method for r in self.fake.requests], ["POST", "POST", "GET"])

    def test_chunked_request_body(self):
        self.conn.putrequest("POST", "/echo")
        self.conn.putheader("Transfer-Encoding", "chunked")
        self.conn.endheaders()
        self.conn.send(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
        resp = self.conn.getresponse()
        self.assertEqual(json.loads(resp.read())["body_len"], 11)
        self.assertEqual(self.fake.requests[-1].body, b"hello world")
        _, body = self.call("POST", "/v1/messages", {"model": "m"})  # connection still usable
        self.assertEqual(body, FIXTURES["anthropic_nonstream.json"])
        self.assertEqual(self.fake.connections, 1)


if __name__ == "__main__":
    unittest.main()
