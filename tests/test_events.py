"""/token_events (the earlier implementation's live feed, without its duplicates) and
/metrics (Prometheus text format)."""

import http.client
import json
import re
import time

from tests.fake_upstream import FIXTURES, Reply
from tests.support import ProxyTestCase

ANTHROPIC = {"anthropic-version": "2023-06-01", "content-type": "application/json"}


def body(model="claude-sonnet-4-6"):
    return {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


class TokenEvents(ProxyTestCase):
    def read_events(self, resp, want, timeout=5.0):
        """Parse SSE events from a live response until `want` token_usage events arrived."""
        buf, events, deadline = "", [], time.time() + timeout
        while len(events) < want and time.time() < deadline:
            buf += resp.read1(65536).decode()
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
                if fields.get("event") == "token_usage":
                    events.append((int(fields["id"]), json.loads(fields["data"])))
        return events

    def test_each_turn_once_in_id_order(self):
        self.request("POST", "/v1/messages", body(), ANTHROPIC)          # before subscribing
        first = self.rows(expect=1)[0]
        conn = http.client.HTTPConnection("127.0.0.1", self.app.port, timeout=10)
        conn.request("GET", "/token_events")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertTrue(resp.getheader("content-type").startswith("text/event-stream"))
        for i in range(5):
            self.request("POST", "/agent/e%d/v1/messages" % i, body(), ANTHROPIC)
        events = self.read_events(resp, 5)
        ids = [i for i, _ in events]
        self.assertEqual(len(ids), 5)
        self.assertEqual(ids, sorted(set(ids)))                       # ascending, no duplicates
        self.assertTrue(all(i > first["id"] for i in ids))            # only new turns by default
        self.assertEqual([e["agent"] for _, e in events], ["e%d" % i for i in range(5)])
        self.assertEqual(events[0][1]["input_tokens"], 472)
        conn.close()

    def test_after_id_replays_from_a_row(self):
        for _ in range(3):
            self.request("POST", "/v1/messages", body(), ANTHROPIC)
        rows = self.rows(expect=3)
        conn = http.client.HTTPConnection("127.0.0.1", self.app.port, timeout=10)
        conn.request("GET", "/token_events?after_id=%d" % rows[0]["id"])
        events = self.read_events(conn.getresponse(), 2)
        self.assertEqual([i for i, _ in events], [rows[1]["id"], rows[2]["id"]])
        conn.close()

    def test_bad_after_id(self):
        resp = self.request("GET", "/token_events?after_id=abc")
        self.assert_error_shape(resp, 400)


class Metrics(ProxyTestCase):
    def test_counters_per_agent_and_model(self):
        for agent in ("m1", "m1", "m2"):
            self.request("POST", "/agent/%s/v1/messages" % agent, body(), ANTHROPIC)
        odd = json.loads(FIXTURES["anthropic_nonstream.json"])
        odd["model"] = 'odd"model\\\n'
        self.fake.enqueue(Reply(200, [("content-type", "application/json")], json.dumps(odd).encode()))
        self.request("POST", "/agent/m2/v1/messages", body(), ANTHROPIC)
        self.rows(expect=4)
        resp = self.request("GET", "/metrics")
        self.assertEqual(resp.status, 200)
        self.assertTrue(resp.header("content-type").startswith("text/plain; version=0.0.4"))
        text = resp.body.decode()
        self.assertIn('tokenspy_turns_total{agent="m1",model="claude-sonnet-4-6"} 2', text)
        self.assertIn('tokenspy_turns_total{agent="m2",model="claude-sonnet-4-6"} 1', text)
        self.assertIn('tokenspy_turns_total{agent="m2",model="odd\\"model\\\\\\n"} 1', text)  # escaped
        self.assertIn('tokenspy_input_tokens_total{agent="m1",model="claude-sonnet-4-6"} 944', text)
        cost = re.search(r'tokenspy_cost_usd_total\{agent="m1",model="claude-sonnet-4-6"\} ([0-9.]+)', text)
        self.assertAlmostEqual(float(cost.group(1)), 2 * 0.018111, places=8)
        for line in text.splitlines():
            self.assertRegex(line, r'^(# (HELP|TYPE) .+|[a-z_]+(\{[^\n]*\})? [0-9.e+-]+)$')
        self.assertIn("tokenspy_pending_rows 0", text)
