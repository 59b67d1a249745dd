"""Token Spy's own JSON API: /health, /api/settings (shared file, validation, locking, the
systemd timer), /api/usage, /token-usage and /api/summary.

Session status, boundaries, resets, the session manager and the unit files are in
tests/test_sessions.py.
"""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import unittest

from tests.support import ROOT, ProxyTestCase
import tokenspy  # noqa: E402  (support puts the repo on sys.path)
import tokenspy_db  # noqa: E402

JSON = {"Content-Type": "application/json"}


def messages_for(chars, count=1):
    """Messages whose conversation_history_chars (compact JSON) is exactly `chars`."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": ""} for i in range(count)]
    base = len(json.dumps(msgs, ensure_ascii=False, separators=(",", ":")))
    if chars < base:
        raise ValueError("%d chars is below the %d-char minimum for %d messages" % (chars, base, count))
    msgs[-1]["content"] = "x" * (chars - base)
    return msgs


class ApiTestCase(ProxyTestCase):
    """ProxyTestCase plus JSON helpers."""

    def get_json(self, path, status=200, port=None):
        resp = self.request("GET", path, port=port)
        self.assertEqual(resp.status, status, resp.body[:500])
        self.assertIn("application/json", resp.header("content-type", ""))
        return resp.json()

    def post_json(self, path, obj, status=200, headers=None, port=None):
        hdrs = dict(JSON)
        hdrs.update(headers or {})
        body = obj if isinstance(obj, (bytes, str)) else json.dumps(obj)
        resp = self.request("POST", path, body, hdrs, port=port)
        self.assertEqual(resp.status, status, resp.body[:500])
        return resp.json()

    def turn(self, chars, count=1, headers=None, path="/v1/messages"):
        body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": messages_for(chars, count)}
        hdrs = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
        hdrs.update(headers or {})
        resp = self.request("POST", path, body, hdrs)
        self.assertEqual(resp.status, 200, resp.body[:300])
        return resp

    @property
    def settings_path(self):
        return self.app.config.settings

    def settings_bytes(self):
        try:
            with open(self.settings_path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None


class HealthTests(ApiTestCase):

    def test_health_fields(self):
        obj = self.get_json("/health")
        for key in ("status", "agent", "uptime_seconds", "session_char_limit", "version", "db_writable"):
            self.assertIn(key, obj)
        self.assertEqual(obj["status"], "ok")
        self.assertEqual(obj["agent"], self.agent)
        self.assertIsInstance(obj["uptime_seconds"], int)
        self.assertGreaterEqual(obj["uptime_seconds"], 0)
        self.assertEqual(obj["session_char_limit"], 200000)
        self.assertEqual(obj["version"], tokenspy.__version__)
        self.assertIs(obj["db_writable"], True)

    def test_health_follows_the_agent_limit(self):
        self.post_json("/api/settings", {"agents": {self.agent: {"session_char_limit": 12345}}})
        self.assertEqual(self.get_json("/health")["session_char_limit"], 12345)


class SettingsTests(ApiTestCase):

    def test_defaults_and_effective_values(self):
        obj = self.get_json("/api/settings")
        self.assertEqual(obj["session_char_limit"], 200000)
        self.assertEqual(obj["poll_interval_minutes"], 5)
        me = obj["agents"][self.agent]
        self.assertIsNone(me["session_char_limit"])
        self.assertIsNone(me["poll_interval_minutes"])
        self.assertEqual(me["_effective_session_char_limit"], 200000)
        self.assertEqual(me["_effective_poll_interval_minutes"], 5)
        # GET does not write the file
        self.assertIsNone(self.settings_bytes())

    def test_partial_updates_overrides_and_null_clears(self):
        obj = self.post_json("/api/settings", {"session_char_limit": 150000})
        self.assertEqual(obj["session_char_limit"], 150000)
        self.assertEqual(obj["poll_interval_minutes"], 5)          # untouched
        self.assertEqual(obj["agents"][self.agent]["_effective_session_char_limit"], 150000)

        obj = self.post_json("/api/settings", {"agents": {"other": {"session_char_limit": 80000}}})
        self.assertEqual(obj["session_char_limit"], 150000)        # the global survived
        self.assertEqual(obj["agents"]["other"]["session_char_limit"], 80000)
        self.assertEqual(obj["agents"]["other"]["_effective_session_char_limit"], 80000)
        self.assertIsNone(obj["agents"]["other"]["poll_interval_minutes"])
        self.assertEqual(obj["agents"]["other"]["_effective_poll_interval_minutes"], 5)
        self.assertEqual(obj["agents"][self.agent]["_effective_session_char_limit"], 150000)

        obj = self.post_json("/api/settings", {"agents": {"other": {"poll_interval_minutes": 3}}})
        self.assertEqual(obj["agents"]["other"]["session_char_limit"], 80000)   # merged, not replaced
        self.assertEqual(obj["agents"]["other"]["_effective_poll_interval_minutes"], 3)

        # a later global change is inherited by agents without an override only
        obj = self.post_json("/api/settings", {"session_char_limit": 120000})
        self.assertEqual(obj["agents"]["other"]["_effective_session_char_limit"], 80000)
        self.assertEqual(obj["agents"][self.agent]["_effective_session_char_limit"], 120000)

        obj = self.post_json("/api/settings", {"agents": {"other": {"session_char_limit": None}}})
        self.assertIsNone(obj["agents"]["other"]["session_char_limit"])
        self.assertEqual(obj["agents"]["other"]["_effective_session_char_limit"], 120000)
        self.assertEqual(obj["agents"]["other"]["poll_interval_minutes"], 3)

        # GET shows the same thing, and the file is valid JSON with the stored (not effective) values
        self.assertEqual(self.get_json("/api/settings"), obj)
        with open(self.settings_path) as fh:
            stored = json.load(fh)
        self.assertEqual(stored["session_char_limit"], 120000)
        self.assertIsNone(stored["agents"]["other"]["session_char_limit"])
        self.assertNotIn("_effective_session_char_limit", json.dumps(stored))

        # limits at their minimum are accepted
        obj = self.post_json("/api/settings", {"session_char_limit": 10000, "poll_interval_minutes": 1,
                                               "agents": {"other": {"poll_interval_minutes": 60}}})
        self.assertEqual((obj["session_char_limit"], obj["poll_interval_minutes"]), (10000, 1))

    def test_two_instances_share_the_settings_file_at_once(self):
        other_db = os.path.join(self.tmpdir, "other.db")
        second = tokenspy.TokenSpy(tokenspy.load_config(
            ["--port", "0", "--db", other_db, "--agent", self.agent, "--settings", self.settings_path,
             "--upstream", self.fake.url], environ={})).start()
        self.addCleanup(second.close)
        self.assertEqual(self.get_json("/api/session-status?agent=" + self.agent,
                                       port=second.port)["session_char_limit"], 200000)
        for limit in (50000, 50001, 60000):        # back-to-back writes of same-sized files
            self.post_json("/api/settings", {"agents": {self.agent: {"session_char_limit": limit}}})
            seen = self.get_json("/api/settings", port=second.port)
            self.assertEqual(seen["agents"][self.agent]["session_char_limit"], limit)
            self.assertEqual(seen["agents"][self.agent]["_effective_session_char_limit"], limit)
            status = self.get_json("/api/session-status?agent=" + self.agent, port=second.port)
            self.assertEqual(status["session_char_limit"], limit)
            self.assertEqual(self.get_json("/health", port=second.port)["session_char_limit"], limit)
        # and the other way round
        self.post_json("/api/settings", {"session_char_limit": 30000}, port=second.port)
        self.assertEqual(self.get_json("/api/settings")["session_char_limit"], 30000)

    INVALID = (
        # (body bytes, headers, the field the error must name)
        (b'{"session_char_limit": 50000', JSON, "JSON"),
        (b'', JSON, "JSON"),
        (b'[1, 2]', JSON, "object"),
        (b'{"session_char_limit": "50000"}', JSON, "session_char_limit"),
        (b'{"session_char_limit": 50000.0}', JSON, "session_char_limit"),
        (b'{"session_char_limit": 50000.5}', JSON, "session_char_limit"),
        (b'{"session_char_limit": true}', JSON, "session_char_limit"),
        (b'{"session_char_limit": 9999}', JSON, "session_char_limit"),
        (b'{"session_char_limit": -1}', JSON, "session_char_limit"),
        (b'{"session_char_limit": null}', JSON, "session_char_limit"),
        (b'{"poll_interval_minutes": 0}', JSON, "poll_interval_minutes"),
        (b'{"poll_interval_minutes": 61}', JSON, "poll_interval_minutes"),
        (b'{"poll_interval_minutes": "5"}', JSON, "poll_interval_minutes"),
        (b'{"poll_interval_minutes": false}', JSON, "poll_interval_minutes"),
        (b'{"poll_interval_minutes": null}', JSON, "poll_interval_minutes"),
        (b'{"session_limit": 50000}', JSON, "session_limit"),
        (b'{"agents": {"a": {"session_char_limit": "80000"}}}', JSON, "agents.a.session_char_limit"),
        (b'{"agents": {"a": {"session_char_limit": 80000.0}}}', JSON, "agents.a.session_char_limit"),
        (b'{"agents": {"a": {"session_char_limit": true}}}', JSON, "agents.a.session_char_limit"),
        (b'{"agents": {"a": {"session_char_limit": 5000}}}', JSON, "agents.a.session_char_limit"),
        (b'{"agents": {"a": {"poll_interval_minutes": 99}}}', JSON, "agents.a.poll_interval_minutes"),
        (b'{"agents": {"a": {"colour": 1}}}', JSON, "agents.a.colour"),
        (b'{"agents": {"bad name": {"session_char_limit": 80000}}}', JSON, "bad name"),
        (b'{"agents": {"a": 5}}', JSON, "agents.a"),
        (b'{"agents": [1]}', JSON, "agents"),
        # a valid change together with an invalid one: nothing is applied
        (b'{"session_char_limit": 90000, "poll_interval_minutes": 0}', JSON, "poll_interval_minutes"),
        (b'{"agents": {"a": {"session_char_limit": 90000}, "b": {"session_char_limit": 1}}}', JSON,
         "agents.b.session_char_limit"),
        # not application/json
        (b'{"session_char_limit": 50000}', {"Content-Type": "text/plain"}, "application/json"),
        (b'{"session_char_limit": 50000}', {"Content-Type": "application/x-www-form-urlencoded"},
         "application/json"),
        (b'{"session_char_limit": 50000}', {}, "application/json"),
    )

    def check_invalid_posts_leave_the_file_unchanged(self):
        before = self.settings_bytes()
        before_view = self.get_json("/api/settings")
        for body, headers, field in self.INVALID:
            with self.subTest(body=body, headers=headers):
                resp = self.request("POST", "/api/settings", body, headers)
                obj = self.assert_error_shape(resp, 400, "api")
                self.assertIn(field, obj["error"])
                self.assertEqual(self.settings_bytes(), before)
        self.assertEqual(self.get_json("/api/settings"), before_view)

    def test_invalid_posts_without_a_settings_file(self):
        self.check_invalid_posts_leave_the_file_unchanged()
        self.assertIsNone(self.settings_bytes())

    def test_invalid_posts_with_a_settings_file(self):
        self.post_json("/api/settings", {"session_char_limit": 70000, "agents": {"a": {"session_char_limit": 20000}}})
        self.check_invalid_posts_leave_the_file_unchanged()

    def test_cross_site_post_is_refused(self):
        self.post_json("/api/settings", {"session_char_limit": 70000})
        before = self.settings_bytes()
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site"}):
            with self.subTest(headers=headers):
                hdrs = dict(JSON)
                hdrs.update(headers)
                resp = self.request("POST", "/api/settings", {"session_char_limit": 90000}, hdrs)
                self.assert_error_shape(resp, 403, "api")
                self.assertEqual(self.settings_bytes(), before)
        # the dashboard itself (same origin) may change settings
        same = {"Origin": "http://127.0.0.1:%d" % self.app.port}
        self.assertEqual(self.post_json("/api/settings", {"session_char_limit": 90000}, headers=same)
                         ["session_char_limit"], 90000)

    def test_keys_from_later_versions_survive_a_round_trip(self):
        with open(self.settings_path, "w") as fh:
            fh.write('{"session_char_limit": 60000, "agents": {}, "future_key": [1, 2]}\n')
        self.assertEqual(self.get_json("/api/settings")["session_char_limit"], 60000)
        # keys added by later versions survive a round trip
        self.post_json("/api/settings", {"poll_interval_minutes": 9})
        with open(self.settings_path) as fh:
            stored = json.load(fh)
        self.assertEqual(stored["future_key"], [1, 2])
        self.assertEqual(stored["session_char_limit"], 60000)


# The writer process used by the concurrency test: its own TokenSpy, N POSTs to itself.
WRITER = textwrap.dedent("""
    import http.client, json, sys
    sys.path.insert(0, sys.argv[1])
    import tokenspy
    db, settings, prefix, n = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    app = tokenspy.TokenSpy(tokenspy.load_config(
        ["--port", "0", "--db", db, "--settings", settings, "--agent", prefix + "-self",
         "--upstream", "http://127.0.0.1:9"], environ={})).start()
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(n):
            conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
            body = json.dumps({"agents": {"%s-%d" % (prefix, i): {"session_char_limit": 10000 + i}}})
            conn.request("POST", "/api/settings", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            if resp.status != 200:
                print("POST %d -> %d %s" % (i, resp.status, data[:200]), flush=True)
                sys.exit(1)
        print("done", flush=True)
    finally:
        app.close()
""")


class SettingsConcurrencyTests(ApiTestCase):

    N = 50

    def test_two_processes_never_lose_an_update_and_readers_see_whole_files(self):
        settings = os.path.join(self.tmpdir, "shared-settings.json")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSPY_")}
        env.pop("SESSION_CHAR_LIMIT", None)
        env.pop("POLL_INTERVAL_MINUTES", None)
        procs = []
        for prefix in ("alpha", "beta"):
            db = os.path.join(self.tmpdir, prefix + ".db")
            p = subprocess.Popen([sys.executable, "-c", WRITER, ROOT, db, settings, prefix, str(self.N)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
            procs.append(p)
        self.addCleanup(lambda: [p.kill() for p in procs if p.poll() is None])
        for p in procs:
            self.assertEqual(p.stdout.readline().strip(), "ready", p.stderr.read() if p.poll() is not None else "")

        bad, reads, stop = [], [0], threading.Event()

        def reader():
            while not stop.is_set():
                try:
                    with open(settings, "rb") as fh:
                        data = fh.read()
                except FileNotFoundError:
                    continue
                reads[0] += 1
                try:
                    obj = json.loads(data)
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    bad.append((str(exc), data[:200]))

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            outputs.append((p.returncode, out, err))
        stop.set()
        t.join(5)
        for rc, out, err in outputs:
            self.assertEqual(rc, 0, out + err)
            self.assertIn("done", out)
        self.assertEqual(bad, [], "a reader saw a partial settings file")
        self.assertGreater(reads[0], 0)

        with open(settings) as fh:
            final = json.load(fh)
        expected = {"%s-%d" % (p, i): 10000 + i for p in ("alpha", "beta") for i in range(self.N)}
        got = {name: v.get("session_char_limit") for name, v in final["agents"].items()}
        missing = sorted(set(expected) - set(got))
        self.assertEqual(missing, [], "lost updates: %d of %d overrides missing" % (len(missing), len(expected)))
        self.assertEqual(got, expected)
        # no temp files left behind
        leftovers = [n for n in os.listdir(self.tmpdir) if n.endswith(".tmp")]
        self.assertEqual(leftovers, [])


FAKE_SYSTEMCTL = """#!/bin/sh
printf '%%s\\n' "$*" >> '%(log)s'
%(tail)s
"""


class TimerTests(ApiTestCase):

    def setUp(self):
        super().setUp()
        self.bindir = os.path.join(self.tmpdir, "bin")
        os.mkdir(self.bindir)
        self.calls = os.path.join(self.tmpdir, "systemctl.log")
        self.dropin = os.path.join(self.tmpdir, "x.d", "poll-interval.conf")
        old_path = os.environ.get("PATH", "")
        self.addCleanup(os.environ.__setitem__, "PATH", old_path)
        os.environ["PATH"] = self.bindir + os.pathsep + old_path
        self.restart_proxy(["--upstream", self.fake.url, "--timer-dropin", self.dropin])

    def fake_systemctl(self, tail="exit 0"):
        path = os.path.join(self.bindir, "systemctl")
        with open(path, "w") as fh:
            fh.write(FAKE_SYSTEMCTL % {"log": self.calls, "tail": tail})
        os.chmod(path, 0o755)

    def calls_made(self):
        try:
            with open(self.calls) as fh:
                return fh.read().splitlines()
        except FileNotFoundError:
            return []

    def test_interval_change_writes_dropin_and_restarts_timer(self):
        self.fake_systemctl()
        obj = self.post_json("/api/settings", {"poll_interval_minutes": 7})
        self.assertEqual(obj["poll_interval_minutes"], 7)
        self.assertIs(obj["timer"]["updated"], True, obj["timer"])
        with open(self.dropin) as fh:
            text = fh.read()
        self.assertIn("[Timer]", text)
        self.assertIn("OnUnitActiveSec=7min", text.splitlines())
        self.assertEqual(self.calls_made(), ["daemon-reload", "restart tokenspy.timer"])
        # the same value again: no restart
        obj = self.post_json("/api/settings", {"poll_interval_minutes": 7})
        self.assertNotIn("timer", obj)
        self.assertEqual(len(self.calls_made()), 2)
        # a per-agent poll override does not touch the timer either
        self.post_json("/api/settings", {"agents": {"x": {"poll_interval_minutes": 9}}})
        self.assertEqual(len(self.calls_made()), 2)

    def test_failing_systemctl_is_reported(self):
        self.fake_systemctl(tail="echo 'Failed to connect to bus: No medium found' >&2\nexit 1")
        obj = self.post_json("/api/settings", {"poll_interval_minutes": 8})
        self.assertEqual(obj["poll_interval_minutes"], 8)        # the setting itself is saved
        self.assertIs(obj["timer"]["updated"], False)
        self.assertIn("Failed to connect to bus: No medium found", obj["timer"]["reason"])
        self.assertIn("daemon-reload", obj["timer"]["reason"])
        self.assertEqual(self.calls_made(), ["daemon-reload"])     # no restart after a failed reload
        self.assertEqual(self.get_json("/api/settings")["poll_interval_minutes"], 8)

    def test_no_systemctl_on_path(self):
        os.environ["PATH"] = self.bindir          # empty folder: no systemctl anywhere
        obj = self.post_json("/api/settings", {"poll_interval_minutes": 3})
        self.assertIs(obj["timer"]["updated"], False)
        self.assertIn("systemd", obj["timer"]["reason"])
        self.assertEqual(self.get_json("/api/settings")["poll_interval_minutes"], 3)

    def test_invalid_interval_never_writes_the_dropin(self):
        self.fake_systemctl()
        for value in (0, 61, -5, "7", 7.5, True, None):
            with self.subTest(value=value):
                resp = self.request("POST", "/api/settings", {"poll_interval_minutes": value}, JSON)
                self.assert_error_shape(resp, 400, "api")
        self.assertFalse(os.path.exists(self.dropin))
        self.assertFalse(os.path.exists(os.path.dirname(self.dropin)))
        self.assertEqual(self.calls_made(), [])
        self.assertEqual(self.get_json("/api/settings")["poll_interval_minutes"], 5)

    def test_update_timer_refuses_invalid_minutes_directly(self):
        self.fake_systemctl()
        for value in (0, 61, "7", None):
            result = tokenspy.update_timer(value, self.dropin, "tokenspy.timer")
            self.assertIs(result["updated"], False)
        self.assertFalse(os.path.exists(self.dropin))
        self.assertEqual(self.calls_made(), [])


class UsageTests(ApiTestCase):

    def insert(self, age_seconds, agent="tester", **cols):
        row = {"timestamp": tokenspy_db.iso_utc(time.time() - age_seconds), "agent": agent,
               "provider": "anthropic", "api": "messages", "method": "POST", "path": "/v1/messages",
               "model": "claude-sonnet-4-6", "status": 200, "usage_source": "provider",
               "input_tokens": 100, "output_tokens": 10, "cache_read_tokens": 0, "cache_write_tokens": 0,
               "estimated_cost_usd": 0.001, "conversation_history_chars": 1000}
        row.update(cols)
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            keys = sorted(row)
            cur = conn.execute("INSERT INTO usage (%s) VALUES (%s)" % (", ".join(keys), ", ".join("?" * len(keys))),
                               [row[k] for k in keys])
            conn.commit()
            return cur.lastrowid
        finally:
            conn.close()

    def ids(self, path):
        return [r["id"] for r in self.get_json(path)]

    def test_time_window_is_exact(self):
        recent = self.insert(30 * 60)
        older = self.insert(90 * 60)
        oldest = self.insert(5 * 3600)
        self.assertEqual(self.ids("/api/usage?hours=1"), [recent])
        self.assertEqual(self.ids("/api/usage?hours=2"), [recent, older])
        self.assertEqual(self.ids("/api/usage?hours=6"), [recent, older, oldest])
        self.assertEqual(self.ids("/api/usage?hours=0.25"), [])
        self.assertEqual(self.ids("/api/usage"), [recent, older, oldest])        # default 24 h
        self.assertEqual(self.ids("/token-usage?hours=1"), [recent])
        summary = self.get_json("/api/summary?hours=1")
        self.assertEqual([(r["agent"], r["turns"]) for r in summary], [("tester", 1)])
        summary = self.get_json("/api/summary?hours=2")
        self.assertEqual([(r["agent"], r["turns"]) for r in summary], [("tester", 2)])

    def test_newest_first_limit_and_agent_filter(self):
        ids = [self.insert(600 - 60 * i, agent="a" if i % 2 else "b") for i in range(6)]
        newest_first = list(reversed(ids))
        self.assertEqual(self.ids("/api/usage?hours=1"), newest_first)
        self.assertEqual(self.ids("/api/usage?hours=1&limit=2"), newest_first[:2])
        self.assertEqual(self.ids("/api/usage?limit=10000"), newest_first)
        self.assertEqual(self.ids("/api/usage?agent=a"), [i for i in newest_first if ids.index(i) % 2])
        self.assertEqual(self.ids("/token-usage?agent=b&limit=1"), [ids[4]])
        self.assertEqual(self.ids("/api/usage?agent=nobody"), [])

    def test_bad_parameters(self):
        for query in ("limit=10001", "limit=0", "limit=-1", "limit=abc", "limit=2.5", "hours=abc",
                      "hours=-1", "hours=nan", "hours=inf", "hours=1e9", "agent=bad%20name",
                      "agent=..%2F..%2Fetc"):
            for path in ("/api/usage", "/token-usage"):
                with self.subTest(path=path, query=query):
                    self.assert_error_shape(self.request("GET", path + "?" + query), 400, "api")
        for query in ("hours=abc", "hours=-2", "hours=nan"):
            with self.subTest(summary=query):
                self.assert_error_shape(self.request("GET", "/api/summary?" + query), 400, "api")

    def test_proxied_turn_is_listed_with_its_columns(self):
        self.turn(5000, count=3)
        self.rows(expect=1)
        rows = self.get_json("/api/usage?hours=1&limit=10")
        self.assertEqual(len(rows), 1)
        row = rows[0]
        for col in tokenspy_db.USAGE_COLUMNS:
            self.assertIn(col, row)
        self.assertEqual(row["agent"], "tester")
        self.assertEqual(row["conversation_history_chars"], 5000)
        self.assertEqual(row["message_count"], 3)
        self.assertEqual(row["input_tokens"], 472)
        self.assertEqual(row["cache_read_tokens"], 10240)
        self.assertEqual(self.get_json("/token-usage?hours=1&limit=10"), rows)

    def test_summary_fields(self):
        self.insert(60, input_tokens=100, output_tokens=10, cache_read_tokens=5, cache_write_tokens=7,
                    estimated_cost_usd=0.5, conversation_history_chars=1000, system_prompt_total_chars=10)
        self.insert(120, input_tokens=300, output_tokens=30, cache_read_tokens=15, cache_write_tokens=3,
                    estimated_cost_usd=0.25, conversation_history_chars=3000, system_prompt_total_chars=30)
        self.insert(180, agent="zeta", estimated_cost_usd=None, usage_source="missing")
        self.insert(30 * 3600, input_tokens=999999)            # outside 24 h
        rows = self.get_json("/api/summary?hours=24")
        self.assertEqual([r["agent"] for r in rows], ["tester", "zeta"])
        t = rows[0]
        for key in ("agent", "turns", "total_input_tokens", "total_output_tokens", "total_cache_read",
                    "total_cache_write", "total_cost", "avg_input_tokens", "max_input_tokens",
                    "avg_system_chars", "avg_history_chars", "avg_skill_chars", "avg_base_prompt_chars"):
            self.assertIn(key, t)
        self.assertEqual(t["turns"], 2)
        self.assertEqual(t["total_input_tokens"], 400)
        self.assertEqual(t["total_output_tokens"], 40)
        self.assertEqual(t["total_cache_read"], 20)
        self.assertEqual(t["total_cache_write"], 10)
        self.assertAlmostEqual(t["total_cost"], 0.75)
        self.assertEqual(t["avg_input_tokens"], 200)
        self.assertEqual(t["max_input_tokens"], 300)
        self.assertEqual(t["avg_history_chars"], 2000)
        self.assertEqual(t["avg_system_chars"], 20)
        self.assertNotIn("is_local_model", t)
        self.assertEqual(rows[1]["turns"], 1)
        self.assertIsNone(rows[1]["total_cost"])
        self.assertEqual(self.get_json("/api/summary?hours=48")[0]["turns"], 3)

    def test_summary_marks_local_agents(self):
        self.restart_proxy(["--upstream", self.fake.url, "--local-model-agents", "tester"])
        self.insert(60)
        rows = self.get_json("/api/summary")
        self.assertIs(rows[0]["is_local_model"], True)


class ApiRoutingTests(ApiTestCase):

    def test_unknown_and_wrong_method(self):
        self.assert_error_shape(self.request("GET", "/api/nothing"), 404, "api")
        self.assert_error_shape(self.request("DELETE", "/api/settings"), 405, "api")
        self.assert_error_shape(self.request("GET", "/api/reset-session?agent=tester"), 405, "api")
        self.assertEqual(self.fake.requests, [])       # Token Spy's paths are never relayed


if __name__ == "__main__":
    unittest.main()
