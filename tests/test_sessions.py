"""Session control: status and recommendations, session boundaries, resets (manual,
automatic, across instances), the session manager and the systemd units.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

from tests.fake_upstream import FIXTURES, Reply
from tests.support import ROOT
from tests.test_api import JSON, ApiTestCase, messages_for
import tokenspy  # noqa: E402
import tokenspy_db  # noqa: E402

STAMP_RE = r"\d{8}T\d{6}Z"
STATUS_FIELDS = ("current_session_turns", "current_history_chars", "last_turn_cost", "avg_cost_last_5",
                 "cache_write_pct_last_5", "cost_since_last_reset", "turns_since_last_reset", "recommendation",
                 "session_char_limit", "last_reset")


def snapshot(folder):
    """Everything observable about a folder's entries (symlinks not followed)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        st = os.lstat(path)
        link = os.readlink(path) if os.path.islink(path) else None
        data = None
        if link is None and os.path.isfile(path):
            with open(path, "rb") as fh:
                data = fh.read()
        out[name] = (link, st.st_size, st.st_mtime_ns, data)
    return out


def rows_of(histories, start=1_700_000_000, sid=None):
    """Synthetic turns (oldest first) from [(history, message_count[, session id])]."""
    rows = []
    for i, item in enumerate(histories):
        h, mc = item[0], item[1]
        rows.append({"id": i + 1, "timestamp": tokenspy_db.iso_utc(start + i * 10), "conversation_history_chars": h,
                     "message_count": mc, "client_session_id": item[2] if len(item) > 2 else sid,
                     "estimated_cost_usd": 0.01, "cache_read_tokens": 0, "cache_write_tokens": 0})
    return rows


# ---------------------------------------------------------------------------
# Recommendation and boundaries (pure functions)
# ---------------------------------------------------------------------------

class RecommendationTests(unittest.TestCase):

    def test_edges(self):
        cases = [(0, "healthy"), (9999, "healthy"), (10000, "monitor"), (20000, "monitor"),
                 (20001, "compact_soon"), (25000, "compact_soon"), (25001, "reset_recommended"),
                 (10 ** 9, "reset_recommended"), (None, "no_data")]
        for history, expected in cases:
            with self.subTest(history=history):
                self.assertEqual(tokenspy.recommendation(history, 10000), expected)

    def test_scales_with_the_limit(self):
        self.assertEqual(tokenspy.recommendation(199999, 200000), "healthy")
        self.assertEqual(tokenspy.recommendation(400001, 200000), "compact_soon")
        self.assertEqual(tokenspy.recommendation(500000, 200000), "compact_soon")
        self.assertEqual(tokenspy.recommendation(500001, 200000), "reset_recommended")


class CurrentSessionTests(unittest.TestCase):

    LONG = [(10000, 3), (20000, 5), (30000, 7), (300, 1), (40000, 9), (50000, 11), (300, 1)]

    def test_long_conversation_with_side_calls_is_one_session(self):
        rows = rows_of(self.LONG)
        session, main = tokenspy.current_session(rows)
        self.assertEqual([r["id"] for r in session], [r["id"] for r in rows])
        self.assertEqual([r["conversation_history_chars"] for r in main], [10000, 20000, 30000, 40000, 50000])

    def test_side_call_in_the_middle_only(self):
        rows = rows_of(self.LONG[:-1])
        session, main = tokenspy.current_session(rows)
        self.assertEqual(len(session), 6)
        self.assertEqual(main[-1]["conversation_history_chars"], 50000)

    def test_real_new_session_starts_a_new_one(self):
        for first_count in (1, 3):
            with self.subTest(first_count=first_count):
                rows = rows_of(self.LONG[:-1] + [(2000, first_count), (4000, 3), (6000, 5)])
                session, main = tokenspy.current_session(rows)
                self.assertEqual([r["conversation_history_chars"] for r in session], [2000, 4000, 6000])
                self.assertEqual(main[-1]["conversation_history_chars"], 6000)

    def test_new_session_after_a_trailing_side_call(self):
        # The one-message 300-char call between the sessions cannot be told apart from the
        # new session's own first call (title generation): either side may own it, but
        # none of the old conversation's turns may.
        rows = rows_of(self.LONG + [(2000, 1), (4000, 3), (6000, 5)])
        session, main = tokenspy.current_session(rows)
        self.assertIn([r["conversation_history_chars"] for r in session], ([2000, 4000, 6000], [300, 2000, 4000, 6000]))
        self.assertEqual(main[-1]["conversation_history_chars"], 6000)

    def test_too_new_to_tell_stays_in_the_old_session(self):
        rows = rows_of(self.LONG[:-1] + [(2000, 1)])
        session, main = tokenspy.current_session(rows)
        self.assertEqual(len(session), 7)
        self.assertEqual(main[-1]["conversation_history_chars"], 50000)

    def test_new_session_without_side_call_noise(self):
        rows = rows_of([(10000, 3), (30000, 7), (50000, 11), (2000, 3), (4000, 5), (6000, 7), (8000, 9)])
        session, _ = tokenspy.current_session(rows)
        self.assertEqual([r["conversation_history_chars"] for r in session], [2000, 4000, 6000, 8000])

    def test_client_session_id_separates_interleaved_sessions(self):
        items = [(10000, 3, "A"), (2000, 3, "B"), (20000, 5, "A"), (4000, 5, "B"), (30000, 7, "A"), (6000, 7, "B")]
        session, main = tokenspy.current_session(rows_of(items))
        self.assertEqual([r["client_session_id"] for r in session], ["B"] * 3)
        self.assertEqual(main[-1]["conversation_history_chars"], 6000)
        session, main = tokenspy.current_session(rows_of(items[:-1]))
        self.assertEqual([r["client_session_id"] for r in session], ["A"] * 3)
        self.assertEqual(main[-1]["conversation_history_chars"], 30000)

    def test_turns_before_a_reset_are_excluded(self):
        rows = rows_of([(10000, 3), (20000, 5), (30000, 7), (40000, 9), (45000, 11)])
        reset_at = tokenspy_db.iso_utc(1_700_000_000 + 25)      # between the 3rd and the 4th turn
        session, main = tokenspy.current_session(rows, reset_at)
        self.assertEqual([r["id"] for r in session], [4, 5])
        self.assertEqual(tokenspy.current_session(rows, tokenspy_db.iso_utc(1_700_001_000)), ([], []))

    def test_no_rows(self):
        self.assertEqual(tokenspy.current_session([]), ([], []))
        self.assertEqual(tokenspy.current_session(rows_of([(None, 0)])), ([], []))


# ---------------------------------------------------------------------------
# /api/session-status
# ---------------------------------------------------------------------------

class SessionStatusTests(ApiTestCase):

    def status(self, agent=None, status=200, port=None):
        path = "/api/session-status" + ("?agent=" + agent if agent is not None else "")
        return self.get_json(path, status=status, port=port)

    def test_no_data_without_turns(self):
        for agent in (None, self.agent):
            obj = self.status(agent)
            for key in STATUS_FIELDS:
                self.assertIn(key, obj)
            self.assertEqual(obj["recommendation"], "no_data")
            self.assertEqual(obj["current_session_turns"], 0)
            self.assertEqual(obj["turns_since_last_reset"], 0)
            self.assertIsNone(obj["last_turn_cost"])
            self.assertIsNone(obj["last_reset"])
            self.assertEqual(obj["session_char_limit"], 200000)

    def test_unknown_and_invalid_agents(self):
        self.assert_error_shape(self.request("GET", "/api/session-status?agent=nobody"), 404, "api")
        for bad in ("bad%20name", "..%2F..%2Fetc", "-dash", "a" * 65, "%00"):
            with self.subTest(agent=bad):
                self.assert_error_shape(self.request("GET", "/api/session-status?agent=" + bad), 400, "api")
        # an agent with only settings is known
        self.post_json("/api/settings", {"agents": {"configured": {"session_char_limit": 30000}}})
        obj = self.status("configured")
        self.assertEqual((obj["recommendation"], obj["session_char_limit"]), ("no_data", 30000))

    def test_recommendation_edges_end_to_end(self):
        self.post_json("/api/settings", {"agents": {self.agent: {"session_char_limit": 10000}}})
        expected = [(9999, "healthy"), (10000, "monitor"), (20000, "monitor"), (20001, "compact_soon"),
                    (25000, "compact_soon"), (25001, "reset_recommended")]
        for n, (history, rec) in enumerate(expected, start=1):
            with self.subTest(history=history):
                self.turn(history, count=2 * n + 1)
                self.rows(expect=n)
                obj = self.status(self.agent)
                self.assertEqual(obj["current_history_chars"], history)
                self.assertEqual(obj["recommendation"], rec)
                self.assertEqual(obj["current_session_turns"], n)
                self.assertEqual(obj["session_char_limit"], 10000)

    def test_costs_and_cache_fields(self):
        for i, chars in enumerate((3000, 4000, 5000, 6000, 7000, 8000)):
            self.turn(chars, count=2 * i + 1)
        rows = self.rows(expect=6)
        obj = self.status()
        costs = [r["estimated_cost_usd"] for r in rows]
        self.assertTrue(all(c is not None and c > 0 for c in costs), costs)
        self.assertEqual(obj["current_session_turns"], 6)
        self.assertEqual(obj["turns_since_last_reset"], 6)
        self.assertEqual(obj["current_history_chars"], 8000)
        self.assertAlmostEqual(obj["last_turn_cost"], costs[-1], places=6)
        self.assertAlmostEqual(obj["avg_cost_last_5"], sum(costs[-5:]) / 5, places=6)
        self.assertAlmostEqual(obj["cost_since_last_reset"], sum(costs), places=6)
        # the fixture reports cache_read 10240, cache_write 2048 per turn
        self.assertAlmostEqual(obj["cache_write_pct_last_5"], round(2048 / (2048 + 10240), 4), places=4)
        self.assertEqual(obj["recommendation"], "healthy")

    def test_boundaries_end_to_end(self):
        for chars, count in CurrentSessionTests.LONG:
            self.turn(chars, count)
        self.rows(expect=7)
        obj = self.status()
        self.assertEqual(obj["current_session_turns"], 7)
        self.assertEqual(obj["current_history_chars"], 50000)
        self.assertEqual(obj["turns_since_last_reset"], 7)
        for chars, count in ((2000, 1), (4000, 3), (6000, 5)):
            self.turn(chars, count)
        self.rows(expect=10)
        obj = self.status()
        # 3 new turns, plus perhaps the one-message call just before them (see CurrentSessionTests)
        self.assertIn(obj["current_session_turns"], (3, 4))
        self.assertEqual(obj["current_history_chars"], 6000)
        self.assertEqual(obj["turns_since_last_reset"], 10)
        self.assertEqual(obj["recommendation"], "healthy")

    def test_session_id_header_end_to_end(self):
        sid = "X-Claude-Code-Session-Id"
        for chars, count, s in ((10000, 3, "A"), (20000, 5, "A"), (3000, 3, "B"), (30000, 7, "A"), (5000, 5, "B")):
            self.turn(chars, count, headers={sid: s})
        self.rows(expect=5)
        obj = self.status()
        self.assertEqual((obj["current_session_turns"], obj["current_history_chars"]), (2, 5000))
        self.assertEqual(obj["client_session_id"], "B")
        self.turn(40000, 9, headers={sid: "A"})
        self.rows(expect=6)
        obj = self.status()
        self.assertEqual((obj["current_session_turns"], obj["current_history_chars"]), (4, 40000))


# ---------------------------------------------------------------------------
# Resets: manual, automatic, across instances, symlinks
# ---------------------------------------------------------------------------

class SessionsDirCase(ApiTestCase):
    """A proxy with --sessions-dir on an OpenClaw-layout folder:

        a.jsonl    3000 bytes, listed          (active)
        b.jsonl    5000 bytes, listed          (active, the largest active)
        c.jsonl    2000 bytes, unlisted, fresh (active)
        big.jsonl 50000 bytes, unlisted, 2 h old (NOT active)
        evil.jsonl -> ../outside/file (100000 bytes), listed
    """

    def proxy_args(self):
        self.sessions = os.path.join(self.tmpdir, "sessions")
        self.outside = os.path.join(self.tmpdir, "outside")
        os.mkdir(self.sessions)
        os.mkdir(self.outside)
        self.outside_file = os.path.join(self.outside, "file")
        with open(self.outside_file, "wb") as fh:
            fh.write(b"o" * 100000)
        for name, size in (("a", 3000), ("b", 5000), ("c", 2000), ("big", 50000)):
            with open(os.path.join(self.sessions, name + ".jsonl"), "wb") as fh:
                fh.write(b"{}\n" + b"x" * (size - 4) + b"\n")
        old = time.time() - 7200
        os.utime(os.path.join(self.sessions, "big.jsonl"), (old, old))
        os.symlink(self.outside_file, os.path.join(self.sessions, "evil.jsonl"))
        self.index = {"agent:main:main": {"sessionId": "b", "updatedAt": 1},
                      "agent:main:side": {"sessionId": "a"},
                      "agent:main:evil": {"sessionId": "evil"},
                      "agent:main:gone": {"sessionId": "missing-file"}}
        with open(os.path.join(self.sessions, "sessions.json"), "w") as fh:
            json.dump(self.index, fh)
        self.outside_before = snapshot(self.outside)
        return ["--upstream", self.fake.url, "--sessions-dir", self.sessions]

    def tearDown(self):
        try:
            self.assertEqual(snapshot(self.outside), self.outside_before, "something outside the sessions dir changed")
            self.assertTrue(os.path.islink(os.path.join(self.sessions, "evil.jsonl")))
        finally:
            super().tearDown()

    def names(self):
        return sorted(os.listdir(self.sessions))

    def index_now(self):
        with open(os.path.join(self.sessions, "sessions.json")) as fh:
            return json.load(fh)

    def assert_archived(self, sid):
        archived = [n for n in self.names() if re.match(re.escape(sid) + r"\.jsonl\.reset\." + STAMP_RE + "$", n)]
        self.assertEqual(len(archived), 1, self.names())
        self.assertNotIn(sid + ".jsonl", self.names())
        return os.path.join(self.sessions, archived[0])

    def resets(self):
        return self.app.store.resets(self.agent)


class ResetApiTests(SessionsDirCase):

    def test_manual_reset_archives_largest_active_file(self):
        obj = self.post_json("/api/reset-session?agent=" + self.agent, b"")
        self.assertEqual(obj["action"], "archived")
        self.assertEqual(obj["session_id"], "b")
        self.assertEqual(obj["size_bytes"], 5000)
        archived = self.assert_archived("b")
        self.assertEqual(obj["archived_to"], archived)
        self.assertEqual(os.path.getsize(archived), 5000)
        for name in ("a.jsonl", "c.jsonl", "big.jsonl"):
            self.assertIn(name, self.names())
        index = self.index_now()
        expected = dict(self.index)
        del expected["agent:main:main"]
        self.assertEqual(index, expected)
        (row,) = self.resets()
        self.assertEqual((row["session_id"], row["reason"], row["archived_to"]), ("b", "manual", archived))
        status = self.get_json("/api/session-status?agent=" + self.agent)
        self.assertEqual(status["last_reset"]["session_id"], "b")

    def test_missing_or_unconfigured_agent(self):
        before = snapshot(self.sessions)
        self.assert_error_shape(self.request("POST", "/api/reset-session"), 400, "api")
        self.assert_error_shape(self.request("POST", "/api/reset-session?agent="), 400, "api")
        self.assert_error_shape(self.request("POST", "/api/reset-session?agent=other"), 400, "api")
        self.assert_error_shape(self.request("POST", "/api/reset-session?agent=bad%20name"), 400, "api")
        self.assertEqual(snapshot(self.sessions), before)
        self.assertEqual(self.resets(), [])

    def test_no_sessions_dir_at_all(self):
        self.restart_proxy(["--upstream", self.fake.url])
        obj = self.assert_error_shape(self.request("POST", "/api/reset-session?agent=" + self.agent), 400, "api")
        self.assertIn("sessions dir", obj["error"])

    def test_cross_site_reset_is_refused(self):
        before = snapshot(self.sessions)
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Origin": "http://127.0.0.1:%d.evil.example" % self.app.port}):
            with self.subTest(headers=headers):
                resp = self.request("POST", "/api/reset-session?agent=" + self.agent, b"", headers)
                self.assert_error_shape(resp, 403, "api")
        self.assertEqual(snapshot(self.sessions), before)
        self.assertEqual(self.resets(), [])

    def test_symlink_is_never_a_candidate(self):
        result = self.app.sessions.reset(self.agent, "manual", session_id="evil")
        self.assertEqual(result["action"], "none")
        ids = {f["session_id"] for f in self.app.sessions.session_files(self.agent)}
        self.assertEqual(ids, {"a", "b", "c", "big"})
        # with every real file gone, a reset still leaves the symlink alone
        for sid in ("a", "b", "c", "big"):
            self.app.sessions.reset(self.agent, "manual", session_id=sid)
        self.assertEqual(self.app.sessions.reset(self.agent, "manual")["action"], "none")
        self.assertEqual(len(self.resets()), 4)


class AutoResetTests(SessionsDirCase):

    def setUp(self):
        super().setUp()
        self.post_json("/api/settings", {"agents": {self.agent: {"session_char_limit": 10000}}})

    def test_over_limit_turn_archives_largest_active_file(self):
        self.turn(9999, count=3)
        self.rows(expect=1)
        self.assertEqual(self.resets(), [])                      # below the limit: nothing
        self.turn(12000, count=5)
        self.rows(expect=2)
        archived = self.assert_archived("b")
        self.assertEqual(sorted(n for n in self.names() if n.endswith(".jsonl")),
                         ["a.jsonl", "big.jsonl", "c.jsonl", "evil.jsonl"])
        index = self.index_now()
        self.assertNotIn("agent:main:main", index)
        self.assertEqual(set(index), {"agent:main:side", "agent:main:evil", "agent:main:gone"})
        (row,) = self.resets()
        self.assertEqual((row["session_id"], row["reason"], row["archived_to"], row["history_chars"]),
                         ("b", "auto", archived, 12000))
        self.assertEqual(row["size_bytes"], 5000)
        # the over-limit turn that triggered it is before the reset: status starts afresh
        status = self.get_json("/api/session-status?agent=" + self.agent)
        self.assertEqual(status["last_reset"]["session_id"], "b")
        self.assertEqual(status["turns_since_last_reset"], 0)

    def test_turn_started_before_the_reset_does_not_reset_again(self):
        # no cooldown, so only the "started before the last reset" rule can stop a second reset
        with mock.patch.object(tokenspy, "AUTO_RESET_COOLDOWN", 0.0):
            body = FIXTURES["anthropic_nonstream.json"]
            self.fake.enqueue(Reply(200, [("Content-Type", "application/json")], body, delay=1.0))
            slow = threading.Thread(target=self.turn, args=(15000, 7))
            slow.start()
            deadline = time.time() + 5
            while not self.fake.requests and time.time() < deadline:
                time.sleep(0.01)
            self.assertEqual(len(self.fake.requests), 1)
            self.turn(12000, count=5)                    # starts later, finishes first
            self.rows(expect=1)
            self.assert_archived("b")
            slow.join(10)
            self.rows(expect=2)
        self.assertEqual(len(self.resets()), 1)
        for name in ("a.jsonl", "c.jsonl", "big.jsonl"):
            self.assertIn(name, self.names())

    def test_after_log_ignores_rows_from_before_the_reset(self):
        before = time.time() - 5
        self.app.sessions.reset(self.agent, "manual")
        self.app.sessions._last_auto.clear()
        row = {"agent": self.agent, "status": 200, "conversation_history_chars": 50000,
               "timestamp": tokenspy_db.iso_utc(before)}
        self.app.sessions.after_log([row])
        self.assertEqual(len(self.resets()), 1)
        self.assertIn("a.jsonl", self.names())
        # a later row does reset (the next largest active file)
        row["timestamp"] = tokenspy_db.iso_utc(time.time() + 1)
        self.app.sessions.after_log([row])
        self.assertEqual(len(self.resets()), 2)
        self.assert_archived("a")

    def test_failed_turn_does_not_reset(self):
        from tests.fake_upstream import anthropic_error
        self.fake.enqueue(anthropic_error(529, "overloaded_error", "Overloaded"))
        body = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": messages_for(30000, 3)}
        resp = self.request("POST", "/v1/messages", body, JSON)
        self.assertEqual(resp.status, 529)
        self.rows(expect=1)
        self.assertEqual(self.resets(), [])


class SharedDatabaseResetTests(SessionsDirCase):

    def second(self):
        other = self.start_proxy(["--upstream", self.fake.url, "--sessions-dir", self.sessions])
        self.addCleanup(other.close)
        return other

    def test_stale_scan_in_the_other_instance_does_not_reset_again(self):
        other = self.second()
        stale = other.sessions.active_files(self.agent)          # scanned before the first reset
        first = self.app.sessions.reset(self.agent, "manual")
        self.assertEqual((first["action"], first["session_id"]), ("archived", "b"))
        with mock.patch.object(other.sessions, "active_files", return_value=stale):
            again = other.sessions.reset(self.agent, "auto")
        self.assertEqual(again["action"], "none")
        self.assertEqual(again.get("session_id"), "b")
        self.assertEqual(len(self.resets()), 1)
        for name in ("a.jsonl", "c.jsonl", "big.jsonl"):
            self.assertIn(name, self.names())

    def test_same_session_by_id_on_both(self):
        other = self.second()
        r1 = self.app.sessions.reset(self.agent, "manual", session_id="b")
        r2 = other.sessions.reset(self.agent, "manual", session_id="b")
        self.assertEqual(r1["action"], "archived")
        self.assertEqual(r2["action"], "none")
        self.assertEqual([r["session_id"] for r in self.resets()], ["b"])
        self.assert_archived("b")

    def test_concurrent_resets_archive_once(self):
        other = self.second()
        barrier = threading.Barrier(2)
        results = []

        def go(app):
            barrier.wait()
            results.append(app.sessions.reset(self.agent, "manual", session_id="b"))

        threads = [threading.Thread(target=go, args=(a,)) for a in (self.app, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(sorted(r["action"] for r in results), ["archived", "none"])
        self.assertEqual(len(self.resets()), 1)
        self.assert_archived("b")


# ---------------------------------------------------------------------------
# Session manager (tokenspy.py manage via session-manager.sh)
# ---------------------------------------------------------------------------

def utc_stamp(ts):
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))


class ManagerTests(unittest.TestCase):

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.tmp = self._tmp.name
        self.db = os.path.join(self.tmp, "usage.db")
        self.dir = os.path.join(self.tmp, "sessions")
        os.mkdir(self.dir)
        self.outside = os.path.join(self.tmp, "outside")
        os.mkdir(self.outside)
        with open(os.path.join(self.outside, "file"), "w") as fh:
            fh.write("keep me\n")

    def run_manager(self, *args, dirs=None):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("TOKENSPY_") and k not in ("AGENT_SESSION_DIRS", "DB_PATH", "SESSION_CHAR_LIMIT")}
        env["TOKENSPY_PYTHON"] = sys.executable
        dirs = {"m": self.dir} if dirs is None else dirs
        argv = ["bash", os.path.join(ROOT, "session-manager.sh"), "--db", self.db,
                "--agent-session-dirs", json.dumps(dirs)] + list(args)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=self.tmp)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return json.loads(proc.stdout)

    def make(self, name, size=100, age=0.0, target=None):
        path = os.path.join(self.dir, name)
        if target:
            os.symlink(target, path)
            return path
        with open(path, "wb") as fh:
            fh.write(b"x" * size)
        if age:
            t = time.time() - age
            os.utime(path, (t, t))
        return path

    def index(self, ids):
        with open(os.path.join(self.dir, "sessions.json"), "w") as fh:
            json.dump({"k-" + i: {"sessionId": i} for i in ids}, fh)

    def tree(self):
        now = time.time()
        self.make("listed-new.jsonl", age=5 * 60)           # listed, 5 min
        self.make("listed-old.jsonl", age=3 * 3600)          # listed, 3 h: over --max-sessions
        self.make("idle.jsonl", age=2 * 3600)                # unlisted, 2 h: inactive
        self.make("fresh.jsonl", age=60)                     # unlisted, 1 min: kept
        self.index(["listed-new", "listed-old"])
        self.make("x.jsonl.reset." + utc_stamp(now - 10 * 86400))            # 10 days: purged
        self.make("z.jsonl.deleted." + utc_stamp(now - 8 * 86400))           # OpenClaw's own: purged
        self.make("y.jsonl.reset." + utc_stamp(now - 86400), age=30 * 86400)  # stamp says 1 day: kept
        self.make("evil.jsonl.reset." + utc_stamp(now - 30 * 86400), target=os.path.join(self.outside, "file"))
        self.make("evil.jsonl", target=os.path.join(self.outside, "file"))
        self.make("notes.txt", age=90 * 86400)

    @staticmethod
    def actions(report):
        """-> sorted [(kind, name, reason)] from a report, dry-run or real."""
        (entry,) = report
        out = []
        for a in entry["actions"]:
            if "purge" in a:
                out.append(("purge", a["purge"], None))
            elif "archive" in a:
                out.append(("archive", a["archive"], a["reason"]))
            elif a.get("action") == "archived":
                out.append(("archive", a["session_id"], a["reason"]))
            else:
                out.append(("other", json.dumps(a, sort_keys=True), None))
        return sorted(out)

    def test_empty_folder(self):
        report = self.run_manager()
        self.assertEqual(len(report), 1)
        self.assertEqual(report[0]["agent"], "m")
        self.assertEqual(report[0]["actions"], [])
        self.assertEqual(os.listdir(self.dir), [])

    def test_no_agents_at_all(self):
        self.assertEqual(self.run_manager(dirs={}), [])

    def test_dry_run_changes_nothing(self):
        self.tree()
        before = snapshot(self.dir)
        report = self.run_manager("--dry-run", "--max-sessions", "2", "--retention-days", "7")
        self.assertEqual(snapshot(self.dir), before)
        self.assertEqual(snapshot(self.outside)["file"][3], b"keep me\n")
        self.assertTrue(all(a.get("dry_run") for a in report[0]["actions"]), report)
        store = tokenspy_db.Store(self.db)
        self.addCleanup(store.close)
        self.assertEqual(store.resets(), [])
        kinds = self.actions(report)
        self.assertIn(("archive", "idle", "inactive"), kinds)
        old_archive = [n for n in before if n.startswith("x.jsonl.reset.")][0]
        self.assertIn(("purge", old_archive, None), kinds)
        self.assertFalse([k for k in kinds if k[1].startswith(("y.", "evil", "notes"))], kinds)

    def test_real_pass_and_dry_run_agree(self):
        self.tree()
        dry = self.run_manager("--dry-run", "--max-sessions", "2", "--retention-days", "7")
        real = self.run_manager("--max-sessions", "2", "--retention-days", "7")
        self.check_real_pass(real)
        self.assertEqual(self.actions(dry), self.actions(real),
                         "the dry run reported different actions from the real pass")

    def check_real_pass(self, report):
        names = sorted(os.listdir(self.dir))
        x = [n for n in names if n.startswith("x.jsonl.")]
        self.assertEqual(x, [], "the 10-day-old archive was not purged")
        self.assertFalse([n for n in names if n.startswith("z.jsonl.")])
        self.assertTrue([n for n in names if n.startswith("y.jsonl.reset.")], "a 1-day-old archive was purged")
        (evil_archive,) = [n for n in names if n.startswith("evil.jsonl.reset.")]
        self.assertTrue(os.path.islink(os.path.join(self.dir, evil_archive)))
        self.assertTrue(os.path.islink(os.path.join(self.dir, "evil.jsonl")))
        self.assertIn("notes.txt", names)
        live = sorted(n for n in names if n.endswith(".jsonl") and not os.path.islink(os.path.join(self.dir, n)))
        self.assertEqual(live, ["fresh.jsonl", "listed-new.jsonl"])
        for sid in ("idle", "listed-old"):
            archived = [n for n in names if re.match(sid + r"\.jsonl\.reset\." + STAMP_RE + "$", n)]
            self.assertEqual(len(archived), 1, names)
        with open(os.path.join(self.dir, "sessions.json")) as fh:
            self.assertEqual(json.load(fh), {"k-listed-new": {"sessionId": "listed-new"}})
        with open(os.path.join(self.outside, "file")) as fh:
            self.assertEqual(fh.read(), "keep me\n")
        kinds = self.actions(report)
        self.assertIn(("archive", "idle", "inactive"), kinds)
        self.assertIn(("archive", "listed-old", "count-limit"), kinds)
        purged = sorted(k[1] for k in kinds if k[0] == "purge")
        self.assertEqual([p.split(".")[0] for p in purged], ["x", "z"])
        self.assertEqual(len(kinds), 4, kinds)
        store = tokenspy_db.Store(self.db)
        self.addCleanup(store.close)
        self.assertEqual(sorted((r["session_id"], r["reason"]) for r in store.resets("m")),
                         [("idle", "inactive"), ("listed-old", "count-limit")])

    def test_real_pass(self):
        self.tree()
        self.check_real_pass(self.run_manager("--max-sessions", "2", "--retention-days", "7"))
        # a second pass has nothing left to do
        self.assertEqual(self.run_manager("--max-sessions", "2", "--retention-days", "7")[0]["actions"], [])

    def test_bad_arguments(self):
        proc = subprocess.run(["bash", os.path.join(ROOT, "session-manager.sh"), "--db", self.db,
                               "--max-sessions", "0"], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, TOKENSPY_PYTHON=sys.executable))
        self.assertEqual(proc.returncode, 2)
        proc = subprocess.run(["bash", os.path.join(ROOT, "session-manager.sh")], capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, TOKENSPY_PYTHON="no-such-python-here"))
        self.assertEqual(proc.returncode, 2)
        self.assertIn("TOKENSPY_PYTHON", proc.stderr)


class ManagerKeepsTheLiveSessionTests(SessionsDirCase):
    """Archiving an idle, unrelated file is not a reset of the conversation in progress."""

    def test_inactive_archive_does_not_end_the_current_session(self):
        for chars, count in ((3000, 3), (4000, 5), (5000, 7)):
            self.turn(chars, count)
        self.rows(expect=3)
        before = self.get_json("/api/session-status?agent=" + self.agent)
        self.assertEqual(before["current_session_turns"], 3)
        report = self.app.sessions.manage(inactive_minutes=60, max_sessions=10)
        self.assertIn("big", [a.get("session_id") for a in report[0]["actions"]])     # the 2-hour-old file
        after = self.get_json("/api/session-status?agent=" + self.agent)
        self.assertEqual(after["current_session_turns"], 3, after)
        self.assertEqual(after["current_history_chars"], 5000)
        self.assertEqual(after["recommendation"], before["recommendation"])


# ---------------------------------------------------------------------------
# ShellCheck and systemd units
# ---------------------------------------------------------------------------

UNITS = ("tokenspy.service", "tokenspy-session-manager.service", "tokenspy.timer")


class LintTests(unittest.TestCase):

    def test_shellcheck(self):
        if not shutil.which("shellcheck"):
            self.skipTest("shellcheck is not installed")
        proc = subprocess.run(["shellcheck", "session-manager.sh"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)

    def test_systemd_analyze_verify(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze is not installed")
        with tempfile.TemporaryDirectory() as tmp:
            for name in UNITS:
                with open(os.path.join(ROOT, name)) as fh:
                    text = fh.read()
                with open(os.path.join(tmp, name), "w") as fh:
                    fh.write(text.replace("/opt/tokenspy", ROOT))
            try:
                proc = subprocess.run(["systemd-analyze", "verify"] + [os.path.join(tmp, n) for n in UNITS],
                                      cwd=tmp, capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.skipTest("systemd-analyze cannot run here: %s" % exc)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 and not re.search(r"tokenspy", out):
            self.skipTest("systemd-analyze cannot run here (exit %d): %s" % (proc.returncode, out.strip()[:300]))
        self.assertEqual(proc.returncode, 0, out)
        ours = [line for line in out.splitlines() if "tokenspy" in line]
        self.assertEqual(ours, [], "systemd-analyze warned about the units:\n" + out)

    def test_units_point_at_the_right_files(self):
        texts = {}
        for name in UNITS:
            with open(os.path.join(ROOT, name)) as fh:
                texts[name] = fh.read()
        self.assertIn("Unit=tokenspy-session-manager.service", texts["tokenspy.timer"])
        self.assertIn("OnUnitActiveSec=5min", texts["tokenspy.timer"])
        self.assertIn("ExecStart=/opt/tokenspy/session-manager.sh", texts["tokenspy-session-manager.service"])
        self.assertTrue(os.access(os.path.join(ROOT, "session-manager.sh"), os.X_OK))
        self.assertEqual(tokenspy.OPTIONS[[o.flag for o in tokenspy.OPTIONS].index("--timer-unit")].default,
                         "tokenspy.timer")


if __name__ == "__main__":
    unittest.main()
