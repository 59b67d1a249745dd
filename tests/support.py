"""Shared test scaffolding: a FakeUpstream with an in-process Token Spy in front of it.

    class MyTest(ProxyTestCase):
        def test_x(self):
            status, headers, body = self.request("POST", "/v1/messages", {"model": "m"})
            row = self.rows(expect=1)[-1]

Each test gets a fresh fake provider (``self.fake``), a fresh Token Spy on port 0
(``self.app``) and a temporary database (``self.db``). Subclasses tune them with
``fake_kwargs`` (passed to FakeUpstream) and ``proxy_args()`` (extra command-line flags);
``restart_proxy(args)`` swaps the proxy for one with other flags mid-test.
"""

import gzip
import http.client
import json
import logging
import os
import socket
import sqlite3
import sys
import tempfile
import time
import unittest
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import tokenspy  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402

# Token Spy logs upstream failures as warnings; without a handler Python prints them on
# stderr (logging.lastResort) and clutters the test output. Tests check rows, not logs.
logging.getLogger("tokenspy").addHandler(logging.NullHandler())
logging.getLogger("tokenspy").propagate = False

# Hop-by-hop response headers (plus Date) are not expected to survive a proxy unchanged.
NOT_END_TO_END = frozenset((
    "date", "connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization"))


class Response(tuple):
    """(status, headers, body) that also carries .status, .headers, .body and .reason."""

    def __new__(cls, status, headers, body, reason=""):
        self = tuple.__new__(cls, (status, headers, body))
        self.reason = reason
        return self

    status = property(lambda self: self[0])
    headers = property(lambda self: self[1])
    body = property(lambda self: self[2])

    def header(self, name, default=None):
        """First value of a header (case-insensitive)."""
        return header(self.headers, name, default)

    def json(self):
        return json.loads(self.body)


def header(pairs, name, default=None):
    name = name.lower()
    for key, value in pairs:
        if key.lower() == name:
            return value
    return default


def header_values(pairs, name):
    name = name.lower()
    return [v for k, v in pairs if k.lower() == name]


def end_to_end(pairs):
    """Response headers minus Date and hop-by-hop ones, order kept."""
    return [(k, v) for k, v in pairs if k.lower() not in NOT_END_TO_END]


def free_port():
    """A TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_of(url):
    return urlsplit(url).port


def gunzip(data):
    return gzip.decompress(data)


class ProxyTestCase(unittest.TestCase):
    """FakeUpstream <- in-process Token Spy <- the test, with a temporary database."""

    fake_kwargs = {}
    agent = "tester"

    def proxy_args(self):
        """Flags for the proxy started in setUp (the upstream, port, db and agent are added)."""
        return ["--upstream", self.fake.url]

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.tmpdir = self._tmp.name
        self.db = os.path.join(self.tmpdir, "usage.db")
        self.fake = FakeUpstream(**self.fake_kwargs).start()
        self.extra_fakes = []
        self.app = None
        self.app = self.start_proxy(self.proxy_args())

    def tearDown(self):
        if self.app is not None:
            self.app.close()
        for fake in [self.fake] + self.extra_fakes:
            fake.stop()
        self._tmp.cleanup()

    # -- lifecycle helpers -------------------------------------------------------------

    def start_proxy(self, args):
        argv = ["--port", "0", "--db", self.db, "--agent", self.agent] + list(args)
        return tokenspy.TokenSpy(tokenspy.load_config(argv, environ={})).start()

    def restart_proxy(self, args):
        """Replace self.app with a proxy started with `args` (same database)."""
        if self.app is not None:
            self.app.close()
        self.app = self.start_proxy(args)
        return self.app

    def new_fake(self, **kwargs):
        fake = FakeUpstream(**kwargs).start()
        self.extra_fakes.append(fake)
        return fake

    # -- HTTP helpers ------------------------------------------------------------------

    def connect(self, port=None, timeout=10):
        return http.client.HTTPConnection("127.0.0.1", port or self.app.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, conn=None, port=None):
        """One request -> Response(status, [(name, value), ...], body bytes).

        body: bytes, str (UTF-8) or a JSON-able object (dict/list). headers: dict or list
        of pairs (repeats allowed, order kept); http.client adds only Host (unless given)
        and Content-Length. Goes to the proxy unless `port` names another server; uses
        `conn` (kept open) if given, else a fresh connection closed afterwards.
        """
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode("utf-8")
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        names = {k.lower() for k, _ in pairs}
        own = conn is None
        if own:
            conn = self.connect(port)
        try:
            conn.putrequest(method, path, skip_host="host" in names, skip_accept_encoding=True)
            for name, value in pairs:
                conn.putheader(name, value)
            if body is not None and "content-length" not in names and "transfer-encoding" not in names:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, resp.getheaders(), data, resp.reason)
        finally:
            if own:
                conn.close()

    def direct(self, method, path, body=None, headers=None, fake=None):
        """The same request straight to a fake (self.fake by default), bypassing the proxy."""
        return self.request(method, path, body, headers, port=port_of((fake or self.fake).url))

    # -- database helpers --------------------------------------------------------------

    def rows(self, expect=None, timeout=5.0, flush_timeout=5.0):
        """Logged turns, oldest first, after the recorder has written what it was given.

        A flow is handed to the recorder just after the last byte goes to the client, so a
        test may get here first: with `expect`, wait (up to `timeout`) for that many rows.
        """
        deadline = time.time() + timeout
        while True:
            flushed = self.app.recorder.flush(timeout=flush_timeout)
            rows = sorted(self.app.store.usage(hours=1, limit=1000), key=lambda r: r["id"])
            if expect is None or len(rows) >= expect or time.time() >= deadline:
                break
            time.sleep(0.01)
        self.assertTrue(flushed, "the recorder did not write its pending rows in %s s" % flush_timeout)
        if expect is not None:
            self.assertEqual(len(rows), expect, "expected %d logged turns, got %d: %r"
                             % (expect, len(rows), [(r["path"], r["status"], r["error"]) for r in rows]))
        return rows

    def db_count(self):
        """Rows in the file right now, read with a separate sqlite3 connection (no flush)."""
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
        finally:
            conn.close()

    # -- assertions --------------------------------------------------------------------

    def assert_error_shape(self, resp, status, shape=None):
        """A JSON error answered by Token Spy itself -> the parsed body.

        shape: "anthropic" ({"type": "error", "error": {"type", "message"}}), "openai"
        ({"error": {"message", "type", "param", "code"}}), "api" (Token Spy's own
        {"error": str, "status": int}) or None (any JSON object with an "error").
        """
        code, headers, body = resp
        self.assertEqual(code, status, body[:500])
        self.assertIn("application/json", header(headers, "content-type", ""))
        self.assertEqual(header(headers, "content-length"), str(len(body)))
        obj = json.loads(body)
        self.assertIsInstance(obj, dict)
        self.assertIn("error", obj)
        if shape == "anthropic":
            self.assertEqual(obj["type"], "error")
            self.assertEqual(set(obj["error"]), {"type", "message"})
            self.assertIsInstance(obj["error"]["message"], str)
        elif shape == "openai":
            self.assertEqual(set(obj["error"]), {"message", "type", "param", "code"})
            self.assertIsInstance(obj["error"]["message"], str)
        elif shape == "api":
            self.assertIsInstance(obj["error"], str)
            self.assertEqual(obj["status"], status)
        return obj

    def assert_same_response(self, proxied, direct, msg=None):
        """Status, reason, body bytes and end-to-end headers (in order) are identical."""
        self.assertEqual(proxied.status, direct.status, msg)
        self.assertEqual(proxied.reason, direct.reason, msg)
        self.assertEqual(proxied.body, direct.body, msg)
        self.assertEqual(end_to_end(proxied.headers), end_to_end(direct.headers), msg)
