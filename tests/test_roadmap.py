"""Issue #5, the six roadmap features as API endpoints:

    /api/models          model comparison          ModelTests
    /api/latency         latency analysis          LatencyTests
    /api/budget          cost alerts / budgets     BudgetTests, WebhookTests
    /api/session-history session history           SplitSessionsTests, SessionHistoryTests
    /api/stop-reasons    stop reasons              StopReasonTests
    /api/tools           tool usage                ToolTests
    every endpoint       ?hours= windows, 400/404  WindowTests, ValidationTests

Every expected number is worked out by hand from the inputs (the fixtures' usage and
prices.json's rates, or the synthetic rows inserted here); the comments show the
arithmetic. Nothing is copied from the code's own output.
"""

import http.server
import json
import os
import threading
import time
import unittest
from datetime import datetime, timezone
from unittest import mock

from tests.fake_upstream import Reply, anthropic_error, openai_error
from tests.support import free_port
from tests.test_api import JSON, ApiTestCase, messages_for
import tokenspy  # noqa: E402
import tokenspy_db  # noqa: E402

ANTH = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
JSON_CT = [("content-type", "application/json")]

# tests/fixtures/anthropic_nonstream.json (claude-sonnet-4-6, stop_reason tool_use, calls get_weather):
#   input 472, cache read 10240, cache write 2048 (all 1 h), output 89.
#   prices.json claude-sonnet-4-6 per 1M: input $3, output $15, cache read $0.30, 1 h write $6
#   472*3 + 89*15 + 10240*0.3 + 2048*6 = 1416 + 1335 + 3072 + 12288 = 18111 -> $0.018111
ANTH_TURN_USD = 0.018111
ANTH_PROMPT = 472 + 10240 + 2048            # = 12760
# tests/fixtures/openai_chat_nonstream.json (gpt-5-2025-08-07 -> price key gpt-5, finish tool_calls):
#   prompt 1843 of which cached 1536 -> uncached 307; completion 212.
#   gpt-5 per 1M: input $1.25, output $10, cache read $0.125
#   307*1.25 + 212*10 + 1536*0.125 = 383.75 + 2120 + 192 = 2695.75 -> $0.00269575
CHAT_TURN_USD = 0.00269575


def iso(t):
    """Epoch seconds -> the stored format, written here independently of tokenspy_db."""
    dt = datetime.fromtimestamp(t, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (dt.microsecond // 1000)


def epoch(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def avoid_hour_edge(margin=8.0):
    """Budget windows are UTC clock hours: do not let a test straddle one."""
    into = time.time() % 3600
    if into < margin:
        time.sleep(margin - into + 0.2)
    elif 3600 - into < margin:
        time.sleep(3600 - into + margin + 0.2)


def anth_body(model="claude-sonnet-4-6", chars=None, count=1, tools=None, stream=False):
    body = {"model": model, "max_tokens": 64,
            "messages": messages_for(chars, count) if chars else [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    if tools is not None:
        body["tools"] = tools
    return body


def anth_reply(stop, model="claude-haiku-4-5", content=None, usage=None):
    body = {"id": "msg_test", "type": "message", "role": "assistant", "model": model,
            "content": content if content is not None else [{"type": "text", "text": "ok"}],
            "stop_reason": stop, "stop_sequence": "###" if stop == "stop_sequence" else None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 5}}
    return Reply(200, JSON_CT, json.dumps(body).encode())


def chat_reply(finish, model="gpt-5-mini"):
    body = {"id": "chatcmpl-test", "object": "chat.completion", "created": 1764850000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    return Reply(200, JSON_CT, json.dumps(body).encode())


def responses_reply(output, model="gpt-5-2025-08-07", status="completed"):
    body = {"id": "resp_test", "object": "response", "created_at": 1764850000, "status": status,
            "error": None, "incomplete_details": None, "model": model, "output": output,
            "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 120}}
    return Reply(200, JSON_CT, json.dumps(body).encode())


class RoadmapCase(ApiTestCase):
    """ApiTestCase plus direct row inserts (app.store.insert_turns) and request shortcuts."""

    def insert(self, *rows):
        """Insert synthetic turns. Each row: t (epoch s) plus columns; defaults fill the rest."""
        self.app.recorder.flush()            # the store's writer connection is the recorder's
        out = []
        for r in rows:
            r = dict(r)
            t = r.pop("t")
            row = {"timestamp": iso(t), "agent": "tester", "provider": "anthropic", "api": "messages",
                   "method": "POST", "path": "/v1/messages", "model": "claude-sonnet-4-6", "status": 200,
                   "usage_source": "provider", "input_tokens": 100, "output_tokens": 10,
                   "cache_read_tokens": 0, "cache_write_tokens": 0, "estimated_cost_usd": 0.001,
                   "duration_ms": 100, "ttfb_ms": 10, "stop_reason": "end_turn",
                   "conversation_history_chars": 1000, "message_count": 3}
            row.update(r)
            out.append(row)
        return self.app.store.insert_turns(out)

    def send(self, path, body, reply=None, headers=None, status=200, port=None):
        if reply is not None:
            self.fake.enqueue(reply)
        hdrs = dict(ANTH if "/messages" in path else JSON)
        hdrs.update(headers or {})
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        resp = self.request("POST", path, data, hdrs, port=port)
        self.assertEqual(resp.status, status, resp.body[:300])
        return resp


# ---------------------------------------------------------------------------
# 1. Model comparison
# ---------------------------------------------------------------------------

class ModelTests(RoadmapCase):

    def by_model(self, query=""):
        obj = self.get_json("/api/models" + query)
        return obj, {m["model"]: m for m in obj["models"]}

    def test_side_by_side_numbers_from_synthetic_turns(self):
        now = int(time.time())
        rows = []
        # claude-sonnet-4-6: 20 turns i = 1..20, duration 100*i ms, ttfb 10*i ms, prompt
        # 1000 + 3000 cached = 4000 tokens, output 100, cost 0.001*i
        for i in range(1, 21):
            rows.append({"t": now - 600 + i, "duration_ms": 100 * i, "ttfb_ms": 10 * i, "input_tokens": 1000,
                         "cache_read_tokens": 3000, "output_tokens": 100, "estimated_cost_usd": 0.001 * i})
        # ... plus one failed turn without usage (529): counted, timed, never priced
        rows.append({"t": now - 500, "status": 529, "error": "overloaded_error: Overloaded",
                     "usage_source": "missing", "input_tokens": None, "output_tokens": None,
                     "cache_read_tokens": None, "cache_write_tokens": None, "estimated_cost_usd": None,
                     "duration_ms": 50, "ttfb_ms": 50, "stop_reason": None})
        # gpt-5 (agent "other"): 5 turns, durations 1000..5000, ttfb 500, prompt 200 + 800 written,
        # output 50, $0.002 each
        for i in range(1, 6):
            rows.append({"t": now - 400 + i, "agent": "other", "provider": "openai", "api": "chat", "model": "gpt-5",
                         "duration_ms": 1000 * i, "ttfb_ms": 500, "input_tokens": 200, "cache_write_tokens": 800,
                         "output_tokens": 50, "estimated_cost_usd": 0.002})
        # an unpriced model: 3 turns with usage but no price
        for i in range(1, 4):
            rows.append({"t": now - 300 + i, "model": "mystery-local-1", "estimated_cost_usd": None,
                         "input_tokens": 100, "output_tokens": 10, "duration_ms": 200, "ttfb_ms": 20})
        # outside a 24 h window: must not count
        rows.append({"t": now - 3 * 86400, "duration_ms": 999999, "estimated_cost_usd": 9.0})
        self.insert(*rows)

        obj, m = self.by_model("?hours=24")
        self.assertEqual(obj["hours"], 24)
        # ordered by cost: claude 0.21, gpt-5 0.01, unpriced last
        self.assertEqual([x["model"] for x in obj["models"]], ["claude-sonnet-4-6", "gpt-5", "mystery-local-1"])

        c = m["claude-sonnet-4-6"]
        self.assertEqual(c["turns"], 21)
        self.assertEqual(c["failed_turns"], 1)
        self.assertEqual(c["unpriced_turns"], 0)                   # the 529 has no usage: not "unpriced"
        # cost: 0.001 * (1 + ... + 20) = 0.001 * 210 = 0.21; per priced turn 0.21 / 20 = 0.0105
        self.assertAlmostEqual(c["cost_usd"], 0.21, places=9)
        self.assertAlmostEqual(c["cost_per_turn"], 0.0105, places=9)
        # durations: (100 + ... + 2000 + 50) / 21 = (21000 + 50) / 21 = 1002.38
        self.assertAlmostEqual(c["avg_duration_ms"], 1002.4, places=1)
        # p95, nearest rank: ceil(0.95 * 21) = 20th of [50, 100, 200, ..., 2000] = 1900
        self.assertEqual(c["p95_duration_ms"], 1900)
        # ttfb: (10 + ... + 200 + 50) / 21 = (2100 + 50) / 21 = 102.38
        self.assertAlmostEqual(c["avg_ttfb_ms"], 102.4, places=1)
        # prompt: 1000 + 3000 per turn with usage (the 529 has none) -> 4000
        self.assertEqual(c["avg_prompt_tokens"], 4000)
        # cache hit share: 20*3000 read / 20*4000 prompt = 0.75
        self.assertEqual(c["cache_hit_share"], 0.75)
        # output per dollar: 20*100 = 2000 tokens / $0.21 = 9523.81
        self.assertAlmostEqual(c["output_tokens_per_dollar"], 9523.8, delta=0.051)

        g = m["gpt-5"]
        self.assertEqual((g["turns"], g["failed_turns"]), (5, 0))
        self.assertAlmostEqual(g["cost_usd"], 0.01, places=9)               # 5 * 0.002
        self.assertAlmostEqual(g["cost_per_turn"], 0.002, places=9)
        self.assertEqual(g["avg_duration_ms"], 3000)                         # (1000+...+5000)/5
        self.assertEqual(g["p95_duration_ms"], 5000)                         # ceil(0.95*5) = 5th
        self.assertEqual(g["avg_ttfb_ms"], 500)
        self.assertEqual(g["avg_prompt_tokens"], 1000)                       # 200 + 800 written
        self.assertEqual(g["cache_hit_share"], 0)                            # 0 read / 5000
        self.assertAlmostEqual(g["output_tokens_per_dollar"], 25000, delta=0.051)   # 250 / 0.01

        u = m["mystery-local-1"]
        self.assertEqual((u["turns"], u["unpriced_turns"]), (3, 3))
        self.assertIsNone(u["cost_usd"])
        self.assertIsNone(u["cost_per_turn"])
        self.assertIsNone(u["output_tokens_per_dollar"])
        self.assertEqual(u["avg_prompt_tokens"], 100)

        # agent filter: only "other" used gpt-5
        _, m = self.by_model("?hours=24&agent=other")
        self.assertEqual(list(m), ["gpt-5"])
        # all time: the 3-day-old turn joins claude-sonnet-4-6
        _, m = self.by_model("?hours=all")
        self.assertEqual(m["claude-sonnet-4-6"]["turns"], 22)
        self.assertAlmostEqual(m["claude-sonnet-4-6"]["cost_usd"], 9.21, places=9)

    def test_real_turns_priced_from_the_fixtures(self):
        self.send("/v1/messages", anth_body())
        self.send("/v1/chat/completions", {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]})
        self.rows(expect=2)
        _, m = self.by_model("?hours=1")
        self.assertEqual(set(m), {"claude-sonnet-4-6", "gpt-5-2025-08-07"})
        c, g = m["claude-sonnet-4-6"], m["gpt-5-2025-08-07"]
        self.assertEqual((c["provider"], g["provider"]), ("anthropic", "openai"))
        self.assertAlmostEqual(c["cost_per_turn"], ANTH_TURN_USD, places=9)
        self.assertAlmostEqual(g["cost_per_turn"], CHAT_TURN_USD, places=9)
        self.assertEqual(c["avg_prompt_tokens"], ANTH_PROMPT)                # 12760
        self.assertEqual(g["avg_prompt_tokens"], 1843)                       # 307 + 1536
        self.assertEqual(c["cache_hit_share"], 0.8025)                       # 10240 / 12760 = 0.80251
        self.assertEqual(g["cache_hit_share"], 0.8334)                       # 1536 / 1843 = 0.83342
        self.assertAlmostEqual(c["output_tokens_per_dollar"], 4914.1, delta=0.051)   # 89 / 0.018111 = 4914.14
        self.assertAlmostEqual(g["output_tokens_per_dollar"], 78642.3, delta=0.051)  # 212 / 0.00269575 = 78642.31
        for x in (c, g):
            self.assertEqual(x["turns"], 1)
            self.assertIsInstance(x["avg_duration_ms"], (int, float))
            self.assertIsInstance(x["avg_ttfb_ms"], (int, float))
            self.assertLessEqual(x["avg_ttfb_ms"], x["avg_duration_ms"])
            self.assertEqual(x["p95_duration_ms"], x["avg_duration_ms"])   # one turn: p95 = the turn


# ---------------------------------------------------------------------------
# 2. Latency
# ---------------------------------------------------------------------------

class LatencyTests(RoadmapCase):

    def test_percentiles_outliers_and_timelines(self):
        now = int(time.time())
        t_a, t_b = now - 1800, now - 600          # two different minutes in the last hour
        rows = []
        # 19 turns of m-a (agent ag1) at t_a with 100, 200, ..., 1900 ms, one m-b (ag2) turn of 10000 ms
        for i in range(1, 20):
            rows.append({"t": t_a, "model": "m-a", "agent": "ag1", "duration_ms": 100 * i})
        rows.append({"t": t_b, "model": "m-b", "agent": "ag2", "duration_ms": 10000, "input_tokens": 5000})
        ids = self.insert(*rows)
        obj = self.get_json("/api/latency?hours=1")
        # 20 durations sorted: 100..1900, 10000. Nearest rank: median = 10th = 1000, p95 = 19th = 1900
        self.assertEqual(obj["median_ms"], 1000)
        self.assertEqual(obj["p95_ms"], 1900)
        self.assertEqual(obj["outlier_threshold_ms"], 1900)
        # above p95: only the 10000 ms turn
        self.assertEqual([(o["id"], o["duration_ms"], o["model"], o["agent"]) for o in obj["outliers"]],
                         [(ids[-1], 10000, "m-b", "ag2")])
        self.assertEqual(obj["outliers"][0]["prompt_tokens"], 5000)
        # timeline: an hour in 60 s buckets (3600 / 60 = 60 buckets, the first width with <= 120)
        self.assertEqual(obj["bucket_seconds"], 60)
        buckets = obj["buckets"]
        self.assertTrue(all(b - a == 60000 for a, b in zip(buckets, buckets[1:])))
        self.assertLessEqual(buckets[0], (now - 3600) * 1000)
        i_a, i_b = buckets.index(t_a // 60 * 60000), buckets.index(t_b // 60 * 60000)
        # m-a: mean of 100..1900 = 1000, max 1900; m-b: 10000
        for series, key_a, key_b in ((obj["by_model"], "m-a", "m-b"), (obj["by_agent"], "ag1", "ag2")):
            self.assertEqual(set(series), {key_a, key_b})
            self.assertEqual(series[key_a]["avg_ms"][i_a], 1000)
            self.assertEqual(series[key_a]["max_ms"][i_a], 1900)
            self.assertEqual(series[key_b]["avg_ms"][i_b], 10000)
            self.assertEqual(series[key_b]["max_ms"][i_b], 10000)
            self.assertEqual(sum(v is not None for v in series[key_a]["avg_ms"]), 1)
            self.assertEqual(sum(v is not None for v in series[key_b]["avg_ms"]), 1)
            self.assertEqual(len(series[key_a]["avg_ms"]), len(buckets))
        # the agent filter narrows everything
        obj = self.get_json("/api/latency?hours=1&agent=ag1")
        self.assertEqual(set(obj["by_agent"]), {"ag1"})
        # 19 values 100..1900: p95 rank ceil(0.95 * 19) = ceil(18.05) = 19 -> 1900, median 10th -> 1000
        self.assertEqual((obj["median_ms"], obj["p95_ms"]), (1000, 1900))
        self.assertEqual(obj["outliers"], [])

    def test_context_size_vs_latency_correlation(self):
        now = int(time.time())
        # prompt tokens x = 1000..5000 (input only), duration y = 100, 300, 200, 400, 500 ms.
        # mean x = 3000, mean y = 300; dx = -2,-1,0,1,2 (thousands), dy = -200,0,-100,100,200
        # sum dx*dy = 400 + 0 + 0 + 100 + 400 = 900 (x1000); sum dx^2 = 10 (x1e6); sum dy^2 = 100000
        # r = 900 / sqrt(10 * 100000) = 900 / 1000 = 0.9
        xs, ys = [1000, 2000, 3000, 4000, 5000], [100, 300, 200, 400, 500]
        rows = [{"t": now - 500 + i, "input_tokens": x, "duration_ms": y} for i, (x, y) in enumerate(zip(xs, ys))]
        # not in the scatter: no usage (however slow), no duration
        rows.append({"t": now - 100, "usage_source": "missing", "input_tokens": None, "output_tokens": None,
                     "cache_read_tokens": None, "cache_write_tokens": None, "duration_ms": 60000, "status": 502,
                     "error": "connection refused"})
        rows.append({"t": now - 90, "input_tokens": 99999, "duration_ms": None})
        self.insert(*rows)
        sc = self.get_json("/api/latency?hours=1")["scatter"]
        self.assertEqual((sc["x"], sc["y"]), ("prompt_tokens", "duration_ms"))
        self.assertEqual(sc["turns"], 5)
        self.assertAlmostEqual(sc["correlation"], 0.9, places=4)
        self.assertEqual(sorted(map(tuple, sc["points"])), sorted(zip(xs, ys)))
        # cached and written prompt tokens are part of the context size: same x split three ways
        self.insert(*[{"t": now - 50 + i, "agent": "split", "input_tokens": x // 5, "cache_read_tokens": x * 3 // 5,
                       "cache_write_tokens": x // 5, "duration_ms": y} for i, (x, y) in enumerate(zip(xs, ys))])
        sc = self.get_json("/api/latency?hours=1&agent=split")["scatter"]
        self.assertAlmostEqual(sc["correlation"], 0.9, places=4)
        self.assertEqual(sorted(map(tuple, sc["points"])), sorted(zip(xs, ys)))

    def test_no_turns(self):
        obj = self.get_json("/api/latency?hours=1")
        self.assertIsNone(obj["p95_ms"])
        self.assertEqual(obj["outliers"], [])
        self.assertEqual((obj["scatter"]["turns"], obj["scatter"]["correlation"]), (0, None))
        self.assertEqual((obj["by_model"], obj["by_agent"]), ({}, {}))


# ---------------------------------------------------------------------------
# 3. Budgets and alerts
# ---------------------------------------------------------------------------

class HookServer:
    """A tiny local webhook receiver that records POSTs; `hang` seconds of silence first."""

    def __init__(self, hang=0.0):
        self.posts = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.posts.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                        "json": json.loads(body)})
                if hang:
                    time.sleep(hang)
                    return                     # never answer
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def wait(self, n, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.posts) >= n:
                    break
            time.sleep(0.02)
        with self.lock:
            return list(self.posts)


class BudgetTests(RoadmapCase):

    def test_budget_state_edges(self):
        cases = [(0, 10, "ok"), (7.99, 10, "ok"), (8, 10, "warning"), (9.99, 10, "warning"), (10, 10, "over"),
                 (25, 10, "over"), (5, None, "none"), (0, 0, "ok"), (0.01, 0, "over")]
        for spend, budget, state in cases:
            with self.subTest(spend=spend, budget=budget):
                self.assertEqual(tokenspy.budget_state(spend, budget), state)

    def test_windows_are_utc_clock_hours_and_days(self):
        # 1_700_000_000 = 2023-11-14T22:13:20Z: 1_700_000_000 % 3600 = 800, % 86400 = 80000
        self.assertEqual(tokenspy.Budgets.window("hour", 1_700_000_000), (1_699_999_200, 1_700_002_800))
        self.assertEqual(tokenspy.Budgets.window("day", 1_700_000_000), (1_699_920_000, 1_700_006_400))

    def test_settings_validation(self):
        bad = [{"hourly_budget_usd": -1}, {"daily_budget_usd": "5"}, {"daily_budget_usd": True},
               {"hourly_budget_usd": 2000000}, {"budget_webhook_url": "ftp://example.com/x"},
               {"budget_webhook_url": "not a url"}, {"budget_webhook_url": 5},
               {"agents": {"a": {"budget_webhook_url": "http://127.0.0.1:1/"}}},
               {"agents": {"a": {"hourly_budget_usd": -0.5}}}, {"agents": {"bad name": {"daily_budget_usd": 1}}}]
        for patch in bad:
            with self.subTest(patch=patch):
                self.assert_error_shape(self.request("POST", "/api/settings", json.dumps(patch), JSON), 400, "api")
        view = self.post_json("/api/settings", {"hourly_budget_usd": 2, "daily_budget_usd": 10.5,
                                                "budget_webhook_url": "https://hooks.example.com/x",
                                                "agents": {"a": {"hourly_budget_usd": 0.5, "daily_budget_usd": None}}})
        self.assertEqual((view["hourly_budget_usd"], view["daily_budget_usd"]), (2, 10.5))
        a = view["agents"]["a"]
        self.assertEqual((a["_effective_hourly_budget_usd"], a["_effective_daily_budget_usd"]), (0.5, 10.5))
        # null globally means "no budget"; the agent's own override stays
        view = self.post_json("/api/settings", {"hourly_budget_usd": None, "budget_webhook_url": None})
        self.assertIsNone(view["hourly_budget_usd"])
        self.assertIsNone(view["budget_webhook_url"])
        self.assertEqual(view["agents"]["a"]["_effective_hourly_budget_usd"], 0.5)

    def test_states_global_and_per_agent(self):
        avoid_hour_edge()
        self.post_json("/api/settings", {"hourly_budget_usd": 0.02, "daily_budget_usd": 1.0,
                                         "agents": {"spender": {"hourly_budget_usd": 0.05}}})
        self.send("/v1/messages", anth_body())                              # tester: $0.018111
        self.send("/agent/spender/v1/messages", anth_body())                # spender: 2 x $0.018111
        self.send("/agent/spender/v1/messages", anth_body())
        self.rows(expect=3)
        b = self.get_json("/api/budget")
        hour, day = b["periods"]["hour"], b["periods"]["day"]
        now = time.time()
        self.assertEqual(hour["window_start"], iso(now - now % 3600))
        self.assertEqual(day["window_start"], iso(now - now % 86400))
        # global hour: 3 x 0.018111 = 0.054333 of 0.02 -> 271.665 % -> over
        g = hour["global"]
        self.assertAlmostEqual(g["spend_usd"], 3 * ANTH_TURN_USD, places=9)
        self.assertEqual((g["budget_usd"], g["state"]), (0.02, "over"))
        self.assertAlmostEqual(g["pct"], 271.665, delta=0.006)
        # tester inherits 0.02: 0.018111 / 0.02 = 90.555 % -> warning
        t = hour["agents"]["tester"]
        self.assertEqual((t["budget_usd"], t["state"], t["inherited"]), (0.02, "warning", True))
        self.assertAlmostEqual(t["pct"], 90.555, delta=0.006)
        # spender has its own 0.05: 0.036222 / 0.05 = 72.444 % -> ok
        s = hour["agents"]["spender"]
        self.assertEqual((s["budget_usd"], s["state"], s["inherited"]), (0.05, "ok", False))
        self.assertAlmostEqual(s["pct"], 72.444, delta=0.006)
        # the day: 0.054333 of 1.0 -> 5.43 % -> ok
        self.assertEqual(day["global"]["state"], "ok")
        self.assertAlmostEqual(day["global"]["pct"], 5.4333, delta=0.006)
        self.assertFalse(b["webhook_configured"])
        # crossing without a webhook is still recorded (delivered NULL)
        keys = {a["key"]: a for a in b["alerts"]}
        self.assertEqual(set(keys), {"hour/global/*/" + hour["window_start"]})
        self.assertIsNone(keys["hour/global/*/" + hour["window_start"]]["delivered"])
        # one more spender turn: 3 x 0.018111 = 0.054333 of 0.05 -> 108.67 % -> over
        self.send("/agent/spender/v1/messages", anth_body())
        self.rows(expect=4)
        s = self.get_json("/api/budget")["periods"]["hour"]["agents"]["spender"]
        self.assertEqual(s["state"], "over")
        self.assertAlmostEqual(s["pct"], 108.666, delta=0.006)

    def test_hour_and_day_windows_exclude_older_spend(self):
        avoid_hour_edge(15)
        now = time.time()
        hour_start, day_start = now - now % 3600, now - now % 86400
        self.insert({"t": now - 5, "agent": "a", "estimated_cost_usd": 0.25},            # this hour
                    {"t": hour_start - 60, "agent": "a", "estimated_cost_usd": 0.5},     # the hour before
                    {"t": day_start - 3600, "agent": "b", "estimated_cost_usd": 4.0})    # yesterday
        self.post_json("/api/settings", {"hourly_budget_usd": 0.3, "daily_budget_usd": 1.0,
                                         "agents": {"a": {"hourly_budget_usd": 0.2}, "b": {"daily_budget_usd": 0}}})
        b = self.get_json("/api/budget")
        hour, day = b["periods"]["hour"], b["periods"]["day"]
        # this hour: only 0.25 -> global 0.25/0.3 = 83.3 % warning; a: 0.25/0.2 = 125 % over
        self.assertAlmostEqual(hour["global"]["spend_usd"], 0.25, places=9)
        self.assertEqual(hour["global"]["state"], "warning")
        self.assertEqual((hour["agents"]["a"]["state"], hour["agents"]["a"]["pct"]), ("over", 125.0))
        self.assertEqual(hour["agents"]["b"]["spend_usd"], 0)
        # today: 0.25, plus 0.5 when the hour before is still today (not right after midnight)
        today = 0.25 + (0.5 if hour_start - 60 >= day_start else 0)
        self.assertAlmostEqual(day["global"]["spend_usd"], today, places=9)
        self.assertEqual(day["global"]["state"], "ok")              # 75 % (or 25 %) of 1.0
        # b spent yesterday only, and its budget of 0 is not crossed by $0
        self.assertEqual((day["agents"]["b"]["spend_usd"], day["agents"]["b"]["state"]), (0, "ok"))
        self.assertEqual(day["agents"]["b"]["budget_usd"], 0)

    def test_informational_only_far_over_budget(self):
        self.post_json("/api/settings", {"hourly_budget_usd": 0.000001, "daily_budget_usd": 0.000001})
        for _ in range(8):
            started = time.time()
            resp = self.send("/v1/messages", anth_body())
            self.assertLess(time.time() - started, 2.0)
            self.assertEqual(resp.json()["stop_reason"], "tool_use")            # the provider's own answer
        self.rows(expect=8)
        self.assertEqual(len(self.fake.requests), 8)
        g = self.get_json("/api/budget")["periods"]["hour"]["global"]
        self.assertEqual(g["state"], "over")
        # 8 x 0.018111 = 0.144888 of 0.000001 -> 14,488,800 %
        self.assertAlmostEqual(g["pct"], 14488800.0, delta=1)


class WebhookTests(RoadmapCase):

    def hook(self, **kwargs):
        hook = HookServer(**kwargs)
        self.addCleanup(hook.stop)
        return hook

    def alerts(self, n, timeout=8.0):
        """Alerts once `n` of them have a delivery result."""
        deadline = time.time() + timeout
        while True:
            rows = self.app.store.alerts(time.time() - 3600)
            done = [r for r in rows if r["delivered"] is not None]
            if len(done) >= n or time.time() > deadline:
                return rows
            time.sleep(0.05)

    def test_one_post_per_crossed_budget_per_window(self):
        avoid_hour_edge()
        hook = self.hook()
        self.post_json("/api/settings", {"hourly_budget_usd": 0.01, "daily_budget_usd": 0.03,
                                         "budget_webhook_url": hook.url})
        # turn 1: 0.018111 > 0.01 -> the hour is over, globally and for tester (inheriting 0.01)
        self.send("/v1/messages", anth_body())
        self.rows(expect=1)
        posts = hook.wait(2)
        self.assertEqual(sorted((p["json"]["period"], p["json"]["scope"], p["json"]["agent"]) for p in posts),
                         [("hour", "agent", "tester"), ("hour", "global", None)])
        now = time.time()
        for p in posts:
            body = p["json"]
            self.assertEqual((p["path"], p["content_type"]), ("/hook", "application/json"))
            self.assertEqual(body["event"], "budget_exceeded")
            self.assertEqual(body["window_start"], iso(now - now % 3600))
            self.assertEqual(body["window_end"], iso(now - now % 3600 + 3600))
            self.assertEqual(body["budget_usd"], 0.01)
            self.assertAlmostEqual(body["spend_usd"], ANTH_TURN_USD, places=9)
            self.assertAlmostEqual(body["pct"], 181.11, delta=0.006)        # 0.018111 / 0.01
        # turn 2: 2 x 0.018111 = 0.036222 > 0.03 -> the day is crossed too: two more POSTs
        self.send("/v1/messages", anth_body())
        self.rows(expect=2)
        posts = hook.wait(4)
        day = [p["json"] for p in posts if p["json"]["period"] == "day"]
        self.assertEqual(sorted(d["scope"] for d in day), ["agent", "global"])
        for d in day:
            self.assertAlmostEqual(d["spend_usd"], 2 * ANTH_TURN_USD, places=9)
            self.assertEqual(d["window_start"], iso(now - now % 86400))
        # many more turns in the same windows: not one more POST
        for _ in range(6):
            self.send("/v1/messages", anth_body())
        self.rows(expect=8)
        time.sleep(0.5)
        self.assertEqual(len(hook.wait(5, timeout=0.3)), 4)
        rows = self.alerts(4)
        self.assertEqual(len(rows), 4)
        self.assertEqual({r["delivered"] for r in rows}, {1})
        self.assertEqual({r["detail"] for r in rows}, {"HTTP 200"})
        listed = self.get_json("/api/budget")
        self.assertTrue(listed["webhook_configured"])
        self.assertEqual(len(listed["alerts"]), 4)
        self.assertEqual(listed["alerts"][0]["payload"]["event"], "budget_exceeded")

    def test_two_instances_sharing_the_database_send_one(self):
        avoid_hour_edge()
        hook = self.hook()
        self.post_json("/api/settings", {"hourly_budget_usd": 0.05, "budget_webhook_url": hook.url})
        other = self.start_proxy(["--upstream", self.fake.url])
        self.addCleanup(other.close)
        errors = []

        def fire(port):
            try:
                for _ in range(4):
                    self.send("/v1/messages", anth_body(), port=port)
            except Exception as exc:              # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=fire, args=(p,)) for p in (self.app.port, other.port) * 2]
        for th in threads:
            th.start()
        for th in threads:
            th.join(20)
        self.assertEqual(errors, [])
        self.assertTrue(other.recorder.flush(5))
        self.rows(expect=16)
        # 16 x 0.018111 = 0.289776 > 0.05 (crossed at the 3rd turn): global + tester (inherited)
        time.sleep(0.5)
        posts = hook.wait(3, timeout=0.5)
        self.assertEqual(sorted((p["json"]["scope"], p["json"]["agent"]) for p in posts),
                         [("agent", "tester"), ("global", None)])
        self.assertEqual(len(self.alerts(2)), 2)

    def test_refused_webhook_is_recorded_as_not_delivered(self):
        avoid_hour_edge()
        url = "http://127.0.0.1:%d/hook" % free_port()
        self.post_json("/api/settings", {"hourly_budget_usd": 0.01, "budget_webhook_url": url})
        for _ in range(3):
            started = time.time()
            self.send("/v1/messages", anth_body())
            self.assertLess(time.time() - started, 1.0)
        self.rows(expect=3)
        rows = self.alerts(2)
        self.assertEqual(len(rows), 2)
        self.assertEqual({r["delivered"] for r in rows}, {0})
        self.assertTrue(all(r["detail"] for r in rows))

    def test_hanging_webhook_never_slows_the_proxy(self):
        avoid_hour_edge()
        hook = self.hook(hang=10.0)
        self.post_json("/api/settings", {"hourly_budget_usd": 0.01, "budget_webhook_url": hook.url})
        self.send("/v1/messages", anth_body())
        self.rows(expect=1)
        self.assertEqual(len(hook.wait(2)), 2)                 # both POSTs are now hanging
        # while they hang: turns stay fast, and are logged
        for _ in range(5):
            started = time.time()
            self.send("/v1/messages", anth_body())
            self.assertLess(time.time() - started, 1.0)
            started = time.time()
            self.get_json("/api/budget")
            self.assertLess(time.time() - started, 1.0)
        self.rows(expect=6)
        self.assertEqual(len(hook.posts), 2)
        # the webhook times out (5 s) and the alert is recorded as not delivered
        rows = self.alerts(2, timeout=9.0)
        self.assertEqual({r["delivered"] for r in rows}, {0})
        self.assertEqual(len(rows), 2)


# ---------------------------------------------------------------------------
# 4. Session history
# ---------------------------------------------------------------------------

T0 = 1_700_000_000


def turn(offset, history, count, cost=0.01, sid=None, status=200, error=None):
    return {"id": offset, "timestamp": iso(T0 + offset), "ts": (T0 + offset) * 1000, "status": status,
            "error": error, "conversation_history_chars": history, "message_count": count,
            "estimated_cost_usd": cost, "client_session_id": sid, "model": "m"}


def reset(offset, reason):
    return {"timestamp": iso(T0 + offset), "reason": reason, "agent": "a", "session_id": "s%d" % offset}


class SplitSessionsTests(unittest.TestCase):

    def test_every_way_a_session_ends(self):
        rows = [
            # S1 -> auto reset at +25
            turn(0, 10000, 3), turn(10, 20000, 5), turn(20, 30000, 7),
            # S2 -> the agent starts fresh at +60 (1000 < half of 6000, and it does not come back)
            turn(30, 2000, 3, 0.02), turn(40, 4000, 5, 0.02), turn(50, 6000, 7, 0.02),
            turn(55, None, 0),                                    # no history (e.g. embeddings): skipped
            # S3 -> manual reset at +95 (the 'inactive' archive at +57 ends nothing)
            turn(60, 1000, 3, 0.03), turn(70, 2000, 5, 0.03), turn(80, 3000, 7, 0.03), turn(90, 4000, 9, 0.03),
            # S4 -> session-manager reset at +115; one failed turn; no costs known
            turn(100, 5000, 3, None), turn(105, 7000, 5, None, status=529, error="overloaded"),
            turn(110, 9000, 7, None),
            # S5: still open
            turn(120, 1500, 3, 0.05), turn(130, 2500, 5, 0.05),
        ]
        resets = [reset(115, "session-manager"), reset(25, "auto"), reset(57, "inactive"), reset(95, "manual")]
        sessions = tokenspy.split_sessions(rows, resets)
        got = [(s["started"], s["last_turn"], s["turns"], s["peak_history_chars"], s["ended_by"], s["failed_turns"],
                s["duration_s"]) for s in sessions]
        self.assertEqual(got, [
            (iso(T0), iso(T0 + 20), 3, 30000, "auto", 0, 20.0),
            (iso(T0 + 30), iso(T0 + 50), 3, 6000, "fresh_start", 0, 20.0),
            (iso(T0 + 60), iso(T0 + 90), 4, 4000, "manual", 0, 30.0),
            (iso(T0 + 100), iso(T0 + 110), 3, 9000, "session-manager", 1, 10.0),
            (iso(T0 + 120), iso(T0 + 130), 2, 2500, "active", 0, 10.0),
        ])
        costs = [s["cost_usd"] for s in sessions]
        # 3 x 0.01, 3 x 0.02, 4 x 0.03, unknown, 2 x 0.05
        for c, expected in zip(costs, (0.03, 0.06, 0.12, None, 0.1)):
            if expected is None:
                self.assertIsNone(c)
            else:
                self.assertAlmostEqual(c, expected, places=9)
        self.assertEqual(sessions[0]["reset_at"], iso(T0 + 25))
        self.assertEqual(sessions[2]["reset_at"], iso(T0 + 95))
        self.assertEqual(sessions[3]["reset_at"], iso(T0 + 115))
        self.assertNotIn("reset_at", sessions[1])

    def test_a_turn_at_the_reset_instant_belongs_to_the_old_session(self):
        rows = [turn(0, 10000, 3), turn(10, 20000, 5), turn(20, 2000, 3)]
        sessions = tokenspy.split_sessions(rows, [reset(10, "manual")])
        self.assertEqual([(s["turns"], s["ended_by"]) for s in sessions], [(2, "manual"), (1, "active")])

    def test_side_calls_do_not_split(self):
        rows = [turn(0, 10000, 3), turn(10, 20000, 5), turn(20, 300, 1), turn(30, 30000, 7), turn(40, 40000, 9)]
        sessions = tokenspy.split_sessions(rows, [])
        self.assertEqual([(s["turns"], s["peak_history_chars"], s["ended_by"]) for s in sessions],
                         [(5, 40000, "active")])

    def test_client_session_ids_interleaved(self):
        rows = [turn(0, 1000, 3, sid="A"), turn(10, 2000, 3, sid="B"), turn(20, 3000, 5, sid="A"),
                turn(30, 4000, 5, sid="B")]
        sessions = tokenspy.split_sessions(rows, [reset(35, "auto")])
        # B is the newest open session when the reset comes: the reset ended it; A was left
        self.assertEqual([(s["client_session_id"], s["turns"], s["ended_by"]) for s in sessions],
                         [("A", 2, "fresh_start"), ("B", 2, "auto")])

    def test_nothing(self):
        self.assertEqual(tokenspy.split_sessions([], [reset(0, "manual")]), [])


class SessionHistoryTests(RoadmapCase):

    def proxy_args(self):
        self.sessions = os.path.join(self.tmpdir, "sessions")
        os.mkdir(self.sessions)
        self.session_file("s1", listed=True)
        return ["--upstream", self.fake.url, "--sessions-dir", self.sessions]

    def session_file(self, sid, listed=False):
        with open(os.path.join(self.sessions, sid + ".jsonl"), "w") as fh:
            fh.write('{"type":"session"}\n')
        if listed:
            with open(os.path.join(self.sessions, "sessions.json"), "w") as fh:
                json.dump({"agent:main:main": {"sessionId": sid}}, fh)

    def test_auto_reset_manual_reset_and_the_open_session(self):
        self.post_json("/api/settings", {"agents": {self.agent: {"session_char_limit": 10000}}})
        # session 1: 3000 -> 6000 -> 12000 chars; the third reaches the limit: auto reset
        for chars, count in ((3000, 3), (6000, 5), (12000, 7)):
            self.send("/v1/messages", anth_body(chars=chars, count=count))
        self.rows(expect=3)
        self.assertEqual([r["reason"] for r in self.app.store.resets(self.agent)], ["auto"])
        self.assertFalse(os.path.exists(os.path.join(self.sessions, "s1.jsonl")))
        # session 2: the agent's new file; 2000 -> 4000 chars, then a manual reset
        self.session_file("s2")
        for chars, count in ((2000, 3), (4000, 5)):
            self.send("/v1/messages", anth_body(chars=chars, count=count))
        self.rows(expect=5)
        self.assertEqual(self.post_json("/api/reset-session?agent=" + self.agent, b"")["action"], "archived")
        # session 3: one turn, still open
        self.send("/v1/messages", anth_body(chars=1500, count=3))
        turns = self.rows(expect=6)

        obj = self.get_json("/api/session-history?agent=" + self.agent)
        self.assertEqual(obj["agent"], self.agent)
        got = [(s["turns"], s["peak_history_chars"], s["ended_by"]) for s in obj["sessions"]]
        self.assertEqual(got, [(3, 12000, "auto"), (2, 4000, "manual"), (1, 1500, "active")])
        s1, s2, s3 = obj["sessions"]
        # each turn is the Anthropic fixture: $0.018111
        self.assertAlmostEqual(s1["cost_usd"], 3 * ANTH_TURN_USD, places=9)        # 0.054333
        self.assertAlmostEqual(s2["cost_usd"], 2 * ANTH_TURN_USD, places=9)        # 0.036222
        self.assertAlmostEqual(s3["cost_usd"], ANTH_TURN_USD, places=9)
        self.assertEqual((s1["started"], s1["last_turn"]), (turns[0]["timestamp"], turns[2]["timestamp"]))
        self.assertEqual((s2["started"], s2["last_turn"]), (turns[3]["timestamp"], turns[4]["timestamp"]))
        self.assertAlmostEqual(s1["duration_s"], epoch(turns[2]["timestamp"]) - epoch(turns[0]["timestamp"]), places=3)
        self.assertEqual(s3["duration_s"], 0)
        resets = {r["reason"]: r for r in obj["resets"]}
        self.assertEqual(s1["reset_at"], resets["auto"]["timestamp"])
        self.assertEqual(s2["reset_at"], resets["manual"]["timestamp"])
        self.assertEqual(resets["auto"]["session_id"], "s1")
        self.assertEqual(resets["manual"]["session_id"], "s2")
        st = obj["stats"]
        self.assertEqual(st["sessions"], 3)
        self.assertEqual(st["ended_by"], {"auto": 1, "manual": 1, "active": 1})
        self.assertEqual((st["resets"], st["resets_by_reason"]), (2, {"auto": 1, "manual": 1}))
        self.assertEqual(st["resets_per_day"], 2.0)                   # 2 resets / 1 day (24 h default)
        self.assertEqual(st["avg_turns"], 2.5)                        # finished sessions: (3 + 2) / 2
        self.assertAlmostEqual(st["avg_cost_usd"], 2.5 * ANTH_TURN_USD, delta=1e-6)   # (0.054333 + 0.036222) / 2
        # over the last hour: 2 resets / (1/24 day) = 48 a day
        self.assertEqual(self.get_json("/api/session-history?hours=1")["stats"]["resets_per_day"], 48.0)

    def test_a_window_with_too_many_turns_keeps_the_newest(self):
        # Store.session_turns caps the rows it reads (200,000). With more turns than that in
        # the window, the history must still end with the agent's newest turns (its open
        # session), not silently stop at the oldest ones. The cap is lowered to 5 here.
        now = int(time.time())
        histories = [(10000, 3), (20000, 5), (30000, 7), (40000, 9), (1000, 3), (2000, 5), (3000, 7), (4000, 9)]
        ids = self.insert(*[{"t": now - 800 + 100 * i, "agent": "busy", "conversation_history_chars": h,
                             "message_count": c} for i, (h, c) in enumerate(histories)])
        self.assertEqual(len(ids), 8)
        with mock.patch.object(tokenspy_db.Store.session_turns, "__defaults__", (5,)):
            obj = self.get_json("/api/session-history?agent=busy&hours=1")
        last = obj["sessions"][-1]
        # the newest turn is t = now - 800 + 700 = now - 100, in the open session 1000 -> 4000
        self.assertEqual(last["last_turn"], iso(now - 100))
        self.assertEqual((last["ended_by"], last["peak_history_chars"]), ("active", 4000))

    def test_unknown_and_bad_agents(self):
        self.assert_error_shape(self.request("GET", "/api/session-history?agent=nobody"), 404, "api")
        self.assert_error_shape(self.request("GET", "/api/session-history?agent=bad%20name"), 400, "api")
        obj = self.get_json("/api/session-history")                  # default: this instance's agent
        self.assertEqual((obj["agent"], obj["sessions"], obj["stats"]["sessions"]), (self.agent, [], 0))


# ---------------------------------------------------------------------------
# 5. Stop reasons
# ---------------------------------------------------------------------------

class StopReasonTests(RoadmapCase):

    def test_breakdown_from_real_turns(self):
        msg, ops = "/v1/messages", "/agent/ops/v1"
        chat = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]}
        resp = {"model": "gpt-5", "input": "hi"}
        turns = [  # (path, body, scripted reply)
            (msg, anth_body(), None),                                          # fixture: tool_use
            (msg, anth_body("claude-haiku-4-5"), anth_reply("end_turn")),
            (msg, anth_body("claude-haiku-4-5"), anth_reply("max_tokens")),
            (msg, anth_body("claude-haiku-4-5"), anth_reply("refusal")),
            (msg, anth_body("claude-haiku-4-5"), anth_reply("stop_sequence")),
            (msg, anth_body("claude-haiku-4-5"), anth_reply("pause_turn")),
            (msg, anth_body("claude-haiku-4-5"), anthropic_error(529, "overloaded_error", "Overloaded")),
            (msg, anth_body("error-x", stream=True), None),                   # mid-stream error event
            (ops + "/chat/completions", chat, None),                          # fixture: tool_calls
            (ops + "/chat/completions", chat, chat_reply("length")),
            (ops + "/chat/completions", chat, chat_reply("stop")),
            (ops + "/chat/completions", chat, chat_reply("content_filter")),
            (ops + "/chat/completions", chat, openai_error(500, "server_error", "boom")),
            (ops + "/responses", resp, None),                                  # fixture: completed
            (ops + "/responses", {"model": "incomplete-x", "input": "hi"}, None),   # max_output_tokens
            (ops + "/responses", {"model": "incomplete-x", "input": "hi", "stream": True}, None),
        ]
        for path, body, reply in turns:
            status = reply.status if reply is not None else 200
            self.send(path, body, reply, status=status)
        self.rows(expect=16)
        obj = self.get_json("/api/stop-reasons?hours=1")
        self.assertEqual(obj["turns"], 16)
        reasons = {r["stop_reason"]: r for r in obj["reasons"]}
        expected = {"tool_use": 1, "end_turn": 1, "max_tokens": 1, "refusal": 1, "stop_sequence": 1,
                    "pause_turn": 1, "error": 3, "tool_calls": 1, "length": 1, "stop": 1, "content_filter": 1,
                    "completed": 1, "max_output_tokens": 2}
        self.assertEqual({r: x["turns"] for r, x in reasons.items()}, expected)
        self.assertEqual(reasons["error"]["share"], 0.1875)                   # 3 / 16
        self.assertEqual(reasons["max_output_tokens"]["share"], 0.125)        # 2 / 16
        self.assertEqual(obj["reasons"][0]["stop_reason"], "error")           # the most frequent first
        categories = {"tool_use": "tool_use", "tool_calls": "tool_use", "end_turn": "natural", "stop": "natural",
                      "completed": "natural", "max_tokens": "truncated", "length": "truncated",
                      "max_output_tokens": "truncated", "refusal": "refusal", "content_filter": "refusal",
                      "stop_sequence": "stop_sequence", "pause_turn": "paused", "error": "error"}
        self.assertEqual({r: x["category"] for r, x in reasons.items()}, categories)
        # per agent
        self.assertEqual(obj["by_agent"], {
            "tester": {"tool_use": 1, "end_turn": 1, "max_tokens": 1, "refusal": 1, "stop_sequence": 1,
                       "pause_turn": 1, "error": 2},
            "ops": {"tool_calls": 1, "length": 1, "stop": 1, "content_filter": 1, "error": 1, "completed": 1,
                    "max_output_tokens": 2}})
        # per model (the model answered, else the one asked for)
        self.assertEqual(obj["by_model"], {
            "claude-sonnet-4-6": {"tool_use": 1, "error": 1},
            "claude-haiku-4-5": {"end_turn": 1, "max_tokens": 1, "refusal": 1, "stop_sequence": 1, "pause_turn": 1,
                                 "error": 1},
            "gpt-5-2025-08-07": {"tool_calls": 1, "completed": 1, "max_output_tokens": 2},
            "gpt-5-mini": {"length": 1, "stop": 1, "content_filter": 1, "error": 1}})
        # truncations: max_tokens 1 + length 1 + max_output_tokens 2 = 4 of 16 = 0.25
        tr = obj["truncations"]
        self.assertEqual((tr["turns"], tr["share"]), (4, 0.25))
        self.assertEqual(sorted(r["stop_reason"] for r in tr["recent"]),
                         ["length", "max_output_tokens", "max_output_tokens", "max_tokens"])
        # over time, by category (every turn is in the last minute or two)
        per_category = {"natural": 3, "tool_use": 2, "truncated": 4, "stop_sequence": 1, "refusal": 2,
                        "paused": 1, "error": 3}
        self.assertEqual({k: sum(v) for k, v in obj["series"].items()}, per_category)
        self.assertEqual(obj["bucket_seconds"], 60)
        self.assertTrue(all(len(v) == len(obj["buckets"]) for v in obj["series"].values()))
        # one agent
        ops_only = self.get_json("/api/stop-reasons?hours=1&agent=ops")
        self.assertEqual(ops_only["turns"], 8)
        self.assertEqual((ops_only["truncations"]["turns"], ops_only["truncations"]["share"]), (3, 0.375))

    def test_no_turns(self):
        obj = self.get_json("/api/stop-reasons")
        self.assertEqual((obj["turns"], obj["reasons"], obj["truncations"]["share"]), (0, [], None))


# ---------------------------------------------------------------------------
# 6. Tool usage
# ---------------------------------------------------------------------------

# Definitions written as compact JSON: a definition's size is the length of this text.
A_GW = ('{"name":"get_weather","description":"Current weather for a city","input_schema":'
        '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}')
A_SD = ('{"name":"search_docs","description":"Search the project documentation","input_schema":'
        '{"type":"object","properties":{"q":{"type":"string"}}}}')
C_GW = ('{"type":"function","function":{"name":"get_weather","description":"Current weather","parameters":'
        '{"type":"object","properties":{"city":{"type":"string"}}}}}')
C_LK = '{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}'
R_GW = '{"type":"function","name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}'
R_WS = '{"type":"web_search"}'


def raw_body(prefix, tools):
    """A request body with the tool definitions spliced in as written."""
    return prefix + ',"tools":[' + ",".join(tools) + "]}"


class ToolTests(RoadmapCase):

    def tools(self, query="?hours=1"):
        obj = self.get_json("/api/tools" + query)
        return obj, {t["name"]: t for t in obj["tools"]}

    def send_three_shapes(self):
        anth = '{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"hi"}]'
        self.send("/v1/messages", raw_body(anth, [A_GW, A_SD]))                              # calls get_weather
        self.send("/v1/messages", raw_body(anth, [A_GW, A_SD]), anth_reply("end_turn"))      # calls nothing
        chat = '{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]'
        self.send("/v1/chat/completions", raw_body(chat, [C_GW, C_LK]))                      # calls get_weather
        call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
                "arguments": "{\"city\":\"Paris\"}", "status": "completed"}
        self.send("/v1/responses", raw_body('{"model":"gpt-5","input":"hi"', [R_GW, R_WS]), responses_reply([call]))

    def test_definitions_sizes_calls_and_dead_weight(self):
        self.send_three_shapes()
        self.rows(expect=4)
        obj, t = self.tools()
        self.assertEqual(set(t), {"get_weather", "search_docs", "lookup", "web_search"})
        gw = t["get_weather"]
        # carried by all 4 turns, in three shapes; called by the Anthropic fixture, the chat
        # fixture and the scripted Responses reply
        total = 2 * len(A_GW) + len(C_GW) + len(R_GW)
        self.assertEqual((gw["turns_carrying"], gw["times_called"], gw["call_rate"]), (4, 3, 0.75))
        self.assertEqual(gw["max_chars"], max(len(A_GW), len(C_GW), len(R_GW)))
        self.assertEqual(gw["avg_chars"], round(total / 4, 1))
        self.assertEqual(gw["avg_tokens"], round(total / 4 / 4, 1))          # ~4 characters a token
        self.assertEqual(gw["tokens_sent"], total // 4)
        self.assertFalse(gw["dead_weight"])
        expect_dead = {"search_docs": (2, 2 * len(A_SD)), "lookup": (1, len(C_LK)), "web_search": (1, len(R_WS))}
        for name, (carried, chars) in expect_dead.items():
            with self.subTest(tool=name):
                x = t[name]
                self.assertEqual((x["turns_carrying"], x["times_called"], x["dead_weight"]), (carried, 0, True))
                self.assertEqual(x["avg_chars"], chars / carried)
                self.assertEqual(x["tokens_sent"], chars // 4)
                self.assertEqual(x["call_rate"], 0)
        self.assertEqual(obj["dead_weight"], {"tools": 3, "tokens_sent": sum(c // 4 for _, c in expect_dead.values())})
        # most tokens first
        sent = [x["tokens_sent"] for x in obj["tools"]]
        self.assertEqual(sent, sorted(sent, reverse=True))

    def test_agent_filter_and_window(self):
        now = int(time.time())
        self.insert({"t": now - 60, "agent": "a", "tool_defs": [("alpha", 400), ("beta", 80)],
                     "tools_called": json.dumps(["alpha", "alpha"])},
                    {"t": now - 3 * 86400, "agent": "a", "tool_defs": [("ancient", 1000)],
                     "tools_called": json.dumps(["ancient"])},
                    {"t": now - 30, "agent": "b", "tool_defs": [("alpha", 200)]})
        obj, t = self.tools("?hours=24&agent=a")
        self.assertEqual(set(t), {"alpha", "beta"})
        self.assertEqual((t["alpha"]["times_called"], t["alpha"]["call_rate"]), (2, 2.0))
        self.assertEqual((t["beta"]["dead_weight"], t["beta"]["tokens_sent"]), (True, 20))   # 80 / 4
        _, t = self.tools("?hours=24")
        # alpha: 400 + 200 chars over 2 turns
        self.assertEqual((t["alpha"]["turns_carrying"], t["alpha"]["avg_chars"], t["alpha"]["max_chars"]),
                         (2, 300.0, 400))
        _, t = self.tools("?hours=all&agent=a")
        self.assertEqual((t["ancient"]["times_called"], t["ancient"]["dead_weight"]), (1, False))
        obj, t = self.tools("?hours=24&agent=nobody")
        self.assertEqual((obj["tools"], obj["dead_weight"]), ([], {"tools": 0, "tokens_sent": 0}))

    def test_streamed_calls_and_anthropic_server_tools(self):
        anth = '{"model":"claude-sonnet-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]'
        self.send("/v1/messages", raw_body(anth, [A_GW]))          # stream fixture: content_block_start tool_use
        chat = ('{"model":"gpt-5","stream":true,"stream_options":{"include_usage":true},'
                '"messages":[{"role":"user","content":"hi"}]')
        self.send("/v1/chat/completions", raw_body(chat, [C_GW]))  # stream fixture: one tool_calls delta with a name
        server = '{"type":"web_search_20250305","name":"web_search","max_uses":5}'
        block = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}}
        self.send("/v1/messages", raw_body(anth.replace(',"stream":true', ""), [server]),
                  anth_reply("end_turn", content=[block, {"type": "text", "text": "ok"}]))
        self.rows(expect=3)
        _, t = self.tools()
        self.assertEqual((t["get_weather"]["turns_carrying"], t["get_weather"]["times_called"]), (2, 2))
        self.assertEqual(t["get_weather"]["max_chars"], max(len(A_GW), len(C_GW)))
        self.assertEqual((t["web_search"]["turns_carrying"], t["web_search"]["times_called"]), (1, 1))
        self.assertEqual(t["web_search"]["avg_chars"], len(server))
        self.assertFalse(t["web_search"]["dead_weight"])

    def test_responses_builtin_tool_call_counts_as_a_call(self):
        # A Responses built-in tool ({"type": "web_search"}) is called by the model as an
        # output item {"type": "web_search_call"}: it was used, so it is not dead weight.
        search = {"type": "web_search_call", "id": "ws_1", "status": "completed",
                  "action": {"type": "search", "query": "weather Paris"}}
        msg = {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": "Sunny.", "annotations": []}]}
        self.send("/v1/responses", raw_body('{"model":"gpt-5","input":"weather?"', [R_WS]),
                  responses_reply([search, msg]))
        self.rows(expect=1)
        _, t = self.tools()
        self.assertEqual(t["web_search"]["times_called"], 1)
        self.assertFalse(t["web_search"]["dead_weight"])


# ---------------------------------------------------------------------------
# ?hours= windows and parameter validation, every endpoint
# ---------------------------------------------------------------------------

class WindowTests(RoadmapCase):

    def test_old_rows_are_outside_the_window(self):
        now = int(time.time())
        # just inside / just outside each window: 50 min, 70 min, 23.5 h, 25 h, 40 days
        ages = {"a": 50 * 60, "b": 70 * 60, "c": 23.5 * 3600, "d": 25 * 3600, "e": 40 * 86400}
        rows = []
        for name, age in ages.items():
            rows.append({"t": now - age, "agent": "win", "model": "model-" + name, "stop_reason": "end_turn",
                         "tool_defs": [("tool_" + name, 40)], "duration_ms": 100, "message_count": 3,
                         "conversation_history_chars": 1000})
        self.insert(*rows)
        windows = {"1": "a", "24": "abc", "720": "abcd", "all": "abcde", "0": "abcde"}
        for hours, names in windows.items():
            with self.subTest(hours=hours):
                q = "?agent=win&hours=" + hours
                models = self.get_json("/api/models" + q)
                self.assertEqual(sorted(m["model"] for m in models["models"]), ["model-" + n for n in names])
                self.assertEqual(self.get_json("/api/latency" + q)["scatter"]["turns"], len(names))
                self.assertEqual(self.get_json("/api/stop-reasons" + q)["turns"], len(names))
                tools = self.get_json("/api/tools" + q)["tools"]
                self.assertEqual(sorted(t["name"] for t in tools), ["tool_" + n for n in names])
                history = self.get_json("/api/session-history" + q)
                self.assertEqual(sum(s["turns"] for s in history["sessions"]), len(names))
                if hours in ("all", "0"):
                    # 'all' starts at the oldest turn: 40 days = 960 hours ago
                    self.assertAlmostEqual(models["hours"], 960, delta=0.05)
                else:
                    self.assertEqual(models["hours"], float(hours))


class ValidationTests(RoadmapCase):

    ENDPOINTS = ("/api/models", "/api/latency", "/api/stop-reasons", "/api/tools", "/api/session-history")
    BAD = ("hours=abc", "hours=-1", "hours=0.001", "hours=nan", "hours=inf", "hours=1e9", "hours=1h",
           "agent=bad%20name", "agent=..%2F..%2Fetc", "agent=" + "a" * 65, "agent=-leading-dash")

    def test_bad_parameters_get_a_400(self):
        for path in self.ENDPOINTS:
            for query in self.BAD:
                with self.subTest(path=path, query=query):
                    self.assert_error_shape(self.request("GET", path + "?" + query), 400, "api")

    def test_good_parameters(self):
        for path in self.ENDPOINTS + ("/api/budget",):
            for query in ("", "?hours=0.5", "?hours=all", "?hours=24&agent=" + self.agent):
                with self.subTest(path=path, query=query):
                    self.get_json(path + query)

    def test_unknown_agent_for_session_history(self):
        obj = self.assert_error_shape(self.request("GET", "/api/session-history?agent=ghost"), 404, "api")
        self.assertIn("ghost", obj["error"])

    def test_only_get(self):
        for path in self.ENDPOINTS + ("/api/budget",):
            with self.subTest(path=path):
                self.assert_error_shape(self.request("POST", path, b"{}", JSON), 405, "api")
        self.assertEqual(self.fake.requests, [])


if __name__ == "__main__":
    unittest.main()
