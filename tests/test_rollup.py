"""The hourly rollup gives exactly the numbers a scan of the raw turns gives.

Long windows (ROLLUP_MIN_HOURS and more) read whole hours from the `hourly` table, kept
up to date in the writer's own transaction, and the partial hours at each end from raw
rows. These tests compare both paths on the same data, and check that an older database
gets the table filled from its existing turns when it is upgraded.
"""

import os
import random
import sqlite3
import tempfile
import time
import unittest
from unittest import mock

import tokenspy_db
from tokenspy_db import AGGREGATES, Store


def make_rows(n, now, days, seed=7):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = now - rng.uniform(0, days * 86400)
        missing = rng.random() < 0.05
        priced = not missing and rng.random() > 0.1
        inp = None if missing else rng.randint(0, 5000)
        rows.append({
            "timestamp": tokenspy_db.iso_utc(ts), "agent": rng.choice(["a", "b", "c"]),
            "provider": "anthropic", "api": "messages", "method": "POST", "path": "/v1/messages",
            "model": rng.choice(["m1", "m2", None]), "status": rng.choice([200] * 9 + [529]),
            "error": "boom" if rng.random() < 0.03 else None,
            "usage_source": "missing" if missing else "provider",
            "input_tokens": inp, "output_tokens": None if missing else rng.randint(0, 900),
            "cache_read_tokens": None if missing else rng.randint(0, 20000),
            "cache_write_tokens": None if missing else rng.randint(0, 3000),
            "estimated_cost_usd": rng.uniform(0, 0.2) if priced else None,
            "cost_input_usd": rng.uniform(0, 0.01) if priced else None,
            "cache_savings_usd": rng.uniform(-0.01, 0.05) if priced else None,
            "duration_ms": rng.choice([None, rng.randint(50, 90000)]),
            "ttfb_ms": rng.randint(5, 3000), "conversation_history_chars": rng.randint(0, 400000),
            "system_prompt_total_chars": rng.randint(0, 30000), "skill_injection_chars": rng.randint(0, 3000),
            "base_prompt_chars": rng.randint(0, 9000),
            "stop_reason": rng.choice(["end_turn", "tool_use", "max_tokens", None]),
            "tools_called": rng.choice([None, '["bash"]', '["bash", "edit"]']),
            "tool_defs": rng.choice([None, [("bash", 300), ("edit", 120)], [("read", 90)]]),
        })
    return rows


class RollupTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.store = Store(os.path.join(self.tmp.name, "u.db"))
        self.now = time.time()
        rows = make_rows(3000, self.now, days=6)
        for i in range(0, len(rows), 250):          # several batches: the upsert merges them
            self.store.insert_turns(rows[i:i + 250])

    def tearDown(self):
        self.store.close()
        self.tmp.cleanup()

    def both(self, **kw):
        with mock.patch.multiple(tokenspy_db, ROLLUP_MIN_HOURS=10 ** 9, ROLLUP_MIN_HOURS_TOTALS=10 ** 9):
            raw = self.store.aggregate(**kw)                                  # raw rows only
        with mock.patch.object(self.store, "_aggregate_rollup", wraps=self.store._aggregate_rollup) as spy:
            rolled = self.store.aggregate(**kw)
        return raw, rolled, spy.call_count

    def assert_same(self, raw, rolled):
        self.assertEqual(len(raw), len(rolled))
        for a, b in zip(raw, rolled):
            self.assertEqual(set(a), set(b))
            for key in a:
                if isinstance(a[key], float) or isinstance(b[key], float):
                    self.assertAlmostEqual(a[key], b[key], places=6, msg=key)
                else:
                    self.assertEqual(a[key], b[key], key)

    def test_every_grouping_matches_the_raw_scan(self):
        since = self.now - 5 * 86400 - 1234.5          # a window starting mid-hour
        cases = [dict(by=()), dict(by=("agent",)), dict(by=("model",)), dict(by=("agent",), bucket_s=6 * 3600),
                 dict(by=(), agent="b"), dict(by=("model",), agent="c", bucket_s=86400),
                 dict(by=("agent",), since_ts=self.now - 5 * 3600 - 600)]           # totals of a short window
        for case in cases:
            with self.subTest(**case):
                raw, rolled, calls = self.both(**dict(dict(since_ts=since), **case))
                self.assertEqual(calls, 1, "the rollup was not used")
                self.assertTrue(raw and raw[0]["turns"])
                self.assert_same(raw, rolled)
        total = self.both(since_ts=since, by=())[0][0]
        expected = self.store.query("SELECT COUNT(*) AS n FROM usage WHERE timestamp >= ?",
                                    (tokenspy_db.iso_utc(since),))[0]["n"]
        self.assertEqual(total["turns"], expected)

    def test_counting_rollups_match_the_raw_scan(self):
        since = self.now - 5 * 86400 - 777
        for table, bucket in (("hourly_stops", 6 * 3600), ("hourly_stops", None), ("hourly_tools", None)):
            for agent in (None, "a"):
                with self.subTest(table=table, bucket=bucket, agent=agent):
                    with mock.patch.object(tokenspy_db, "ROLLUP_MIN_HOURS", 10 ** 9):
                        raw = self.store.counts(table, since, agent, bucket)
                    rolled = self.store.counts(table, since, agent, bucket)
                    key = lambda r: tuple(str(r[k]) for k in sorted(r))
                    self.assertEqual(sorted(raw, key=key), sorted(rolled, key=key))
                    self.assertGreater(sum(r["turns"] for r in raw), 500)
        stops = self.store.counts("hourly_stops", since)
        self.assertTrue(any(r["reason"] == "error" for r in stops))   # 529s count as errors
        self.assertTrue(any(r["model"] is None for r in stops))       # NULL model stays None

    def test_short_windows_and_sub_hour_buckets_read_raw_rows(self):
        for case in (dict(since_ts=self.now - 2 * 3600), dict(since_ts=self.now - 5 * 86400, bucket_s=1800, by=("agent",)),
                     dict(since_ts=self.now - 24 * 3600, bucket_s=3600, by=("agent",))):
            with self.subTest(**case):
                raw, rolled, calls = self.both(**case)
                self.assertEqual(calls, 0)
                self.assert_same(raw, rolled)

    def test_rows_written_by_anyone_reach_the_rollup(self):
        conn = sqlite3.connect(self.store.path)
        conn.execute("INSERT INTO usage (timestamp, agent, model, status, usage_source, input_tokens) "
                     "VALUES (?, 'outsider', 'm9', 200, 'provider', 42)", (tokenspy_db.iso_utc(self.now - 7200),))
        conn.commit()
        conn.close()
        row = self.store.query("SELECT ts FROM usage WHERE agent = 'outsider'")[0]
        self.assertEqual(row["ts"] // 1000, int(self.now - 7200))                 # ts filled in
        rolled = self.store.query("SELECT turns, input_tokens FROM hourly WHERE agent = 'outsider'")
        self.assertEqual(rolled, [{"turns": 1, "input_tokens": 42}])

    def test_upgrade_fills_the_rollup_from_existing_turns(self):
        path = self.store.path
        expected = self.store.query("SELECT * FROM hourly ORDER BY hour, agent, model")
        self.store.close()
        conn = sqlite3.connect(path)
        for table in ("hourly", "hourly_stops", "hourly_tools"):
            conn.execute("DROP TABLE %s" % table)
        conn.execute("DROP TRIGGER usage_rollup")
        conn.execute("PRAGMA user_version = %d" % (len(tokenspy_db.MIGRATIONS) - 1))
        conn.commit()
        conn.close()
        self.store = Store(path)                     # runs the last migration again
        rebuilt = self.store.query("SELECT * FROM hourly ORDER BY hour, agent, model")
        self.assertEqual(len(rebuilt), len(expected))
        for a, b in zip(rebuilt, expected):
            for key in a:
                if isinstance(a[key], float):
                    self.assertAlmostEqual(a[key], b[key], places=6, msg=key)
                else:
                    self.assertEqual(a[key], b[key], key)
        self.assertEqual(sum(r["turns"] for r in rebuilt), 3000)
        self.assertEqual(set(n for n, _, _ in AGGREGATES) - set(rebuilt[0]), set())


if __name__ == "__main__":
    unittest.main()
