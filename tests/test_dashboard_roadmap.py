"""The dashboard's six roadmap views (issue #5) in a real browser, against the JSON API.

    Model comparison   /api/models           ModelViewTests
    Latency            /api/latency          LatencyViewTests
    Budgets            /api/budget           BudgetViewTests (and the settings panel)
    Session history    /api/session-history  SessionHistoryViewTests
    Stop reasons       /api/stop-reasons     StopReasonViewTests
    Tool usage         /api/tools            ToolViewTests
    all six            loading, errors, filters, XSS, offline tables, phone  RoadmapPageTests
    a fresh install    every view empty, without errors                       RoadmapEmptyTests

The data is DashboardData's (tests/test_dashboard.py) plus: tool definitions in requests
(one never called, one named like an HTML tag), a slow turn (the latency outlier), turns
that end in max_tokens / length / refusal / stop_sequence, an agent whose low session
limit makes Token Spy reset its session automatically before more turns, and hourly
budgets set so that one agent is over and another in warning. Every test compares what
the page shows with a direct call to the same endpoint. Skips like test_dashboard.py
without Chromium, playwright or a local Chart.js.
"""

import json
import os
import re
import time
import unittest

from tests import test_dashboard as td
from tests.fake_upstream import Reply
from tests.test_dashboard import JSON_HEADERS, XSS_MODEL, UNPRICED_MODEL, DashboardCase, DashboardData

XSS_TOOL_DEF = XSS_MODEL                 # a tool *definition* named like an HTML tag (never called)
DEAD_TOOL = "legacy_search"              # carried by requests, never called by a response
SLOW_MS = 1200                           # the slow turn's delay at the fake provider
OPENCLAW_LIMIT = 20000                   # low limit: openclaw's 21,000-char turn is reset automatically

# Tool definitions as the agents send them (Anthropic and OpenAI shapes, same names).
TOOL_SPECS = (
    ("read_file", "Read a file from the workspace and return its content.", {"path": {"type": "string"}}),
    ("bash", "Run a shell command in the sandbox and return its output.", {"command": {"type": "string"}}),
    (DEAD_TOOL, "Search the legacy knowledge base. " + "Deprecated; kept for old prompts. " * 30,
     {"query": {"type": "string"}, "limit": {"type": "integer"}}),
    (XSS_TOOL_DEF, "A probe: this name must stay text.", {}),
)


def anthropic_tools(probe=True):
    return [{"name": n, "description": d, "input_schema": {"type": "object", "properties": p}}
            for n, d, p in TOOL_SPECS if probe or n != XSS_TOOL_DEF]


def openai_tools(probe=True):
    return [{"type": "function", "function": {"name": n, "description": d,
                                              "parameters": {"type": "object", "properties": p}}}
            for n, d, p in TOOL_SPECS if probe or n != XSS_TOOL_DEF]


def chat_reply(model, finish="stop", tool=None, usage=None):
    """An OpenAI chat.completion with a chosen finish_reason (and tool call)."""
    message = {"role": "assistant", "content": None if tool else "ok"}
    if tool:
        message["tool_calls"] = [{"id": "call_1", "type": "function",
                                  "function": {"name": tool, "arguments": "{}"}}]
    body = {"id": "chatcmpl-x", "object": "chat.completion", "created": 1764850000, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 5200, "completion_tokens": 640, "total_tokens": 5840,
                               "prompt_tokens_details": {"cached_tokens": 4096}}}
    return Reply(200, [("content-type", "application/json")], json.dumps(body).encode())


def short(text, n=26):
    """A chart label as the page shortens it (the full name is in the tooltip and the table)."""
    return text if len(text) <= n else text[:n - 1] + "…"


def avoid_hour_edge(margin=40.0):
    """Budgets are per UTC clock hour: do not let a test's data straddle one."""
    into = time.time() % 3600
    if 3600 - into < margin:
        time.sleep(3600 - into + 1.0)


# The synthetic history's tool definitions: 8 tools, 7,400 characters in all; responses
# call read_file, bash, web_search and edit, never the other four.
SYNTHETIC_TOOLS = [("read_file", 1100), ("bash", 1400), ("web_search", 900), ("edit", 1300), ("glob", 500),
                   ("todo_write", 1200), ("notebook_edit", 700), (DEAD_TOOL, 300)]


class RoadmapData(DashboardData):
    """DashboardData plus what the six roadmap views need (see the module docstring)."""

    synthetic_tools = SYNTHETIC_TOOLS

    def seed(self):
        avoid_hour_edge()
        super().seed()
        self.post("/api/settings", {"agents": {"openclaw": {"session_char_limit": OPENCLAW_LIMIT}}})
        # tools in requests; responses call read_file and bash, never legacy_search or the probe
        for tool in ("read_file", "bash", None):
            self.fake.enqueue(td.anthropic_reply("claude-sonnet-4-6", "tool_use" if tool else "end_turn", tool=tool))
            self.rturn("planner", "messages", "claude-sonnet-4-6", 30000, tools=True)
        # why turns end: truncated (max_tokens, length), refused, a stop sequence
        self.fake.enqueue(td.anthropic_reply("claude-sonnet-4-6", "max_tokens", usage={"output_tokens": 512}))
        self.rturn("planner", "messages", "claude-sonnet-4-6", 36000, tools=True)
        self.fake.enqueue(td.anthropic_reply("claude-haiku-4-5", "refusal"))
        self.rturn("reviewer", "messages", "claude-haiku-4-5", 9000)
        self.fake.enqueue(td.anthropic_reply("claude-opus-4-6", "stop_sequence"))
        self.rturn("reviewer", "messages", "claude-opus-4-6", 12000)
        self.fake.enqueue(chat_reply("gpt-5", "length"))
        self.rturn("scout", "chat", "gpt-5", 20000, tools=True)
        self.fake.enqueue(chat_reply("gpt-5", "tool_calls", tool="read_file"))
        self.rturn("scout", "chat", "gpt-5", 22000, tools=True)
        self.fake.enqueue(chat_reply("gpt-5-mini", "stop"))
        self.rturn("scout", "chat", "gpt-5-mini", 8000, tools=True)
        # the slow turn: the latency outlier
        reply = td.anthropic_reply("claude-sonnet-4-6", "end_turn")
        reply.delay = SLOW_MS / 1000.0
        self.fake.enqueue(reply)
        self.rturn("planner", "messages", "claude-sonnet-4-6", 38000)
        # openclaw: a fresh session that reaches its 20,000-char limit -> auto reset, then more turns
        for h in (8000, 14000, 21000):
            self.rturn("openclaw", "messages", "claude-haiku-4-5", h)
        self.wait_reset("openclaw", "auto")
        for h in (5000, 11000):
            self.rturn("openclaw", "messages", "claude-haiku-4-5", h)
        self.wait_rows(self.history_rows + self.turns_proxied)
        self.set_budgets()

    def rturn(self, agent, api, model, history, tools=False, status=200):
        """One turn through the proxy (like DashboardData.turn), optionally carrying tool definitions."""
        if api == "messages":
            path, body = "/agent/%s/v1/messages" % agent, {
                "model": model, "max_tokens": 512, "system": "You are %s. " % agent * 400,
                "messages": td.messages_for(history, 1 + history // 4000)}
            if tools:
                body["tools"] = anthropic_tools(self.with_probe)
            headers = {"Content-Type": "application/json", "x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
        else:
            path, body = "/agent/%s/v1/chat/completions" % agent, {
                "model": model, "messages": [{"role": "system", "content": "You are %s." % agent * 200}]
                + td.messages_for(history, 3)}
            if tools:
                body["tools"] = openai_tools(self.with_probe)
            headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
        resp = self.request("POST", path, body, headers)
        self.assertEqual(resp.status, status, resp.body[:300])
        self.turns_proxied += 1
        return resp

    def wait_reset(self, agent, reason, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.app.recorder.flush()
            if any(r["reason"] == reason for r in self.app.store.resets(agent)):
                return
            time.sleep(0.02)
        self.fail("no %s reset of %s" % (reason, agent))

    def set_budgets(self):
        """Hourly budgets from this hour's real spend: planner over, scout in warning, the
        global one fine; a daily budget for all agents; then one more turn (an alert)."""
        hour = self.get("/api/budget")["periods"]["hour"]
        spend = {a: v["spend_usd"] for a, v in hour["agents"].items()}
        day = self.get("/api/budget")["periods"]["day"]["global"]["spend_usd"]
        self.budgets = {"hourly_budget_usd": round(hour["global"]["spend_usd"] * 3, 4),
                        "daily_budget_usd": round(day * 2 + 1, 2),
                        "agents": {"planner": {"hourly_budget_usd": round(spend["planner"] / 2, 6)},
                                   "scout": {"hourly_budget_usd": round(spend["scout"] / 0.9, 6)}}}
        self.post("/api/settings", self.budgets)
        self.rturn("planner", "messages", "claude-sonnet-4-6", 39000)
        self.wait_rows(self.history_rows + self.turns_proxied)


class RoadmapCase(RoadmapData, DashboardCase):
    """A browser on RoadmapData."""

    VIEWS = ("models", "latency", "budget", "session-history", "stop-reasons", "tools")

    def open(self, fragment="", cdn="serve", local=None):
        page = super().open(fragment, cdn, local)
        self.wait_views()
        return page

    def wait_views(self, after=0):
        """Wait until every roadmap view has settled (data or its own error) after round `after`."""
        self.page.wait_for_function("n => Number(document.body.dataset.roadmap || 0) > n", arg=after)

    def roadmap_round(self):
        return int(self.page.evaluate("document.body.dataset.roadmap || '0'"))


    def section(self, name):
        return self.page.locator("section[data-view='%s']" % name)

    def draws(self, name):
        return self.page.get_attribute("section[data-view='%s']" % name, "data-draws")

    def wait_draw(self, name, before):
        self.page.wait_for_function(
            "([v, n]) => { const s = document.querySelector(`section[data-view='${v}']`);"
            " return s.dataset.draws !== n && s.getAttribute('aria-busy') === null; }", arg=[name, before])

    def rm_chart(self, cid):
        """A roadmap chart as Chart.js holds it (None when it is not drawn as a chart)."""
        return self.page.evaluate("""id => {
            const c = window.Chart && Chart.getChart(document.getElementById('rm-' + id));
            if (!c) return null;
            return {id: c.id, type: c.config.type, labels: c.data.labels,
                    datasets: c.data.datasets.map(d => ({label: d.label, kind: d.tsKind || null, data: d.data,
                                                         colors: d.backgroundColor}))};
        }""", cid)

    def column(self, table, n):
        return self.page.locator("%s tbody tr td:nth-child(%d)" % (table, n)).all_text_contents()

    def sort_by(self, table, key):
        self.page.click("%s th[data-key='%s'] button" % (table, key))
        return self.page.get_attribute("%s th[data-key='%s']" % (table, key), "aria-sort")


# ---------------------------------------------------------------------------
# 1. Model comparison
# ---------------------------------------------------------------------------

class ModelViewTests(RoadmapCase):

    def test_table_and_charts_show_the_api_numbers(self):
        self.open()
        models = self.get("/api/models?hours=24")["models"]
        self.assertGreaterEqual(len(models), 6)
        rows = self.page.locator("#models-table tbody tr")
        self.assertEqual(rows.count(), len(models))
        for m in models:
            with self.subTest(model=m["model"]):
                cells = self.page.locator("#models-table tbody tr[data-model='%s'] td" % m["model"]).all_text_contents()
                cost = "unpriced" if m["cost_usd"] is None else self.fmt("usd", m["cost_usd"])
                self.assertEqual(cells, [m["model"], self.fmt("int", m["turns"]), cost, self.fmt("usd", m["cost_per_turn"]),
                                         self.fmt("ms", m["avg_duration_ms"]), self.fmt("ms", m["p95_duration_ms"]),
                                         self.fmt("ms", m["avg_ttfb_ms"]), self.fmt("compact", m["avg_prompt_tokens"]),
                                         self.fmt("pct", m["cache_hit_share"]), self.fmt("compact", m["output_tokens_per_dollar"]),
                                         self.fmt("int", m["failed_turns"])])
        unpriced = self.page.locator("#models-table tr[data-model='%s'] .badge.unpriced" % UNPRICED_MODEL)
        self.assertEqual(unpriced.text_content(), "unpriced")
        # the bar charts: one bar per model, in the API's order, with its numbers
        cost, latency, value = (self.rm_chart(c) for c in ("model-cost", "model-latency", "model-value"))
        self.assertEqual((cost["type"], cost["labels"]), ("bar", [short(m["model"]) for m in models]))
        self.assertEqual(cost["datasets"][0]["data"], [m["cost_per_turn"] for m in models])
        self.assertEqual([d["label"] for d in latency["datasets"]], ["Average", "p95", "Time to first byte"])
        self.assertEqual(latency["datasets"][1]["data"], [m["p95_duration_ms"] for m in models])
        self.assertEqual(value["datasets"][0]["data"], [m["output_tokens_per_dollar"] for m in models])
        caption = self.page.text_content("[data-rmchart=model-cost] .caption")
        self.assertTrue(caption.startswith("unpriced (no bar): "), caption)
        self.assertIn(UNPRICED_MODEL, caption)

    def test_click_a_header_to_sort(self):
        self.open()
        models = self.get("/api/models?hours=24")["models"]
        # by cost, most first, until told otherwise; unpriced models last
        self.assertEqual(self.page.get_attribute("#models-table th[data-key=cost_usd]", "aria-sort"), "descending")
        self.assertEqual(self.column("#models-table", 1)[0], models[0]["model"])
        self.assertEqual(self.column("#models-table", 3)[-1], "unpriced")
        self.assertEqual(self.sort_by("#models-table", "turns"), "descending")
        turns = [int(t.replace(",", "")) for t in self.column("#models-table", 2)]
        self.assertEqual(turns, sorted((m["turns"] for m in models), reverse=True))
        self.assertEqual(self.page.get_attribute("#models-table th[data-key=cost_usd]", "aria-sort"), "none")
        self.assertEqual(self.sort_by("#models-table", "turns"), "ascending")
        turns = [int(t.replace(",", "")) for t in self.column("#models-table", 2)]
        self.assertEqual(turns, sorted(m["turns"] for m in models))
        self.assertEqual(self.sort_by("#models-table", "model"), "ascending")
        names = self.column("#models-table", 1)
        self.assertEqual(names, self.page.evaluate("n => n.slice().sort((a, b) => a.localeCompare(b))", names))
        self.assertEqual(self.sort_by("#models-table", "model"), "descending")
        self.assertEqual(self.column("#models-table", 1), names[::-1])
        # a model without a value (unpriced: no output per dollar) sorts last in both directions
        self.assertEqual(self.sort_by("#models-table", "output_tokens_per_dollar"), "descending")
        per_dollar = sorted((m for m in models), key=lambda m: (m["output_tokens_per_dollar"] is None,
                                                                 -(m["output_tokens_per_dollar"] or 0)))
        self.assertEqual(self.column("#models-table", 1), [m["model"] for m in per_dollar])
        self.assertEqual(self.sort_by("#models-table", "output_tokens_per_dollar"), "ascending")
        per_dollar = sorted((m for m in models), key=lambda m: (m["output_tokens_per_dollar"] is None,
                                                                 m["output_tokens_per_dollar"] or 0))
        self.assertEqual(self.column("#models-table", 1), [m["model"] for m in per_dollar])
        # the order survives a refresh
        n = self.roadmap_round()
        self.page.click("#refresh")
        self.wait_views(n)
        self.assertEqual(self.column("#models-table", 1), [m["model"] for m in per_dollar])
        self.assertEqual(self.page.get_attribute("#models-table th[data-key=output_tokens_per_dollar]", "aria-sort"),
                         "ascending")


# ---------------------------------------------------------------------------
# 2. Latency
# ---------------------------------------------------------------------------

class LatencyViewTests(RoadmapCase):

    def test_slow_turn_is_listed_and_marked_in_the_scatter(self):
        self.open("#range=1h")                          # only the proxied turns: the slow one stands out
        lat = self.get("/api/latency?hours=1")
        self.assertGreaterEqual(lat["outliers"][0]["duration_ms"], SLOW_MS)
        slow = lat["outliers"][0]
        view = self.section("latency")
        self.assertEqual(view.locator("[data-field=median_ms]").text_content(), self.fmt("ms", lat["median_ms"]))
        self.assertEqual(view.locator("[data-field=p95_ms]").text_content(), self.fmt("ms", lat["p95_ms"]))
        self.assertEqual(view.locator("[data-field=outliers]").text_content(), str(len(lat["outliers"])))
        corr = lat["scatter"]["correlation"]
        self.assertEqual(view.locator("[data-field=correlation]").text_content(), "r = %.2f" % corr)
        rows = self.page.locator("#outliers-table tbody tr")
        self.assertEqual(rows.count(), len(lat["outliers"]))
        first = rows.first.locator("td").all_text_contents()
        self.assertEqual(rows.first.get_attribute("data-id"), str(slow["id"]))
        self.assertEqual(first[1:4], ["planner", "claude-sonnet-4-6", self.fmt("ms", slow["duration_ms"])])
        self.assertIn("slower than the p95 of " + self.fmt("ms", lat["outlier_threshold_ms"]),
                      self.page.text_content("#outliers-caption"))
        scatter = self.rm_chart("latency-scatter")
        self.assertEqual(scatter["type"], "scatter")
        marked = [d for d in scatter["datasets"] if d["kind"] == "outliers"][0]["data"]
        self.assertEqual([(p["x"], p["y"]) for p in marked],
                         [(o["prompt_tokens"], o["duration_ms"]) for o in lat["outliers"]])
        points = [d for d in scatter["datasets"] if d["label"] == "Turns"][0]["data"]
        self.assertEqual([[p["x"], p["y"]] for p in points], lat["scatter"]["points"])
        self.assertTrue(self.page.text_content("[data-rmchart=latency-scatter] .caption").startswith(
            "r = %.2f over %d turns" % (corr, lat["scatter"]["turns"])))

    def test_timeline_per_model_or_per_agent(self):
        self.open()
        lat = self.get("/api/latency?hours=24")
        self.assertGreater(len(lat["outliers"]), 0)
        chart = self.rm_chart("latency-timeline")
        lines = [d for d in chart["datasets"] if not d["kind"]]
        self.assertEqual([d["label"] for d in lines], sorted(lat["by_model"]))
        self.assertEqual(len(chart["labels"]), len(lat["buckets"]))
        sonnet = [d for d in lines if d["label"] == "claude-sonnet-4-6"][0]
        self.assertEqual(sonnet["data"], lat["by_model"]["claude-sonnet-4-6"]["avg_ms"])
        p95 = [d for d in chart["datasets"] if d["kind"] == "p95"][0]
        self.assertEqual(set(p95["data"]), {lat["p95_ms"]})
        draws = self.draws("latency")
        self.page.click("section[data-view=latency] .seg button[data-value=agent]")
        self.wait_draw("latency", draws)
        self.assertEqual(self.page.get_attribute("section[data-view=latency] .seg button[data-value=agent]", "aria-pressed"), "true")
        chart2 = self.rm_chart("latency-timeline")
        self.assertEqual(chart2["id"], chart["id"])                  # updated in place
        self.assertEqual([d["label"] for d in chart2["datasets"] if not d["kind"]], sorted(lat["by_agent"]))
        planner = [d for d in chart2["datasets"] if d["label"] == "planner"][0]
        self.assertEqual(planner["data"], lat["by_agent"]["planner"]["avg_ms"])
        self.assertEqual(self.page.locator("#outliers-table tbody tr.outlier").count(), len(lat["outliers"]))


# ---------------------------------------------------------------------------
# 3. Budgets
# ---------------------------------------------------------------------------

class BudgetViewTests(RoadmapCase):

    def line(self, period, agent=None):
        sel = "#budget-body .bline[data-period=%s]" % period + (
            "[data-scope=global]" if agent is None else "[data-agent='%s']" % agent)
        return self.page.locator(sel)

    def test_spend_against_each_budget_with_its_state(self):
        self.open()
        budget = self.get("/api/budget")
        hour = budget["periods"]["hour"]
        states = {a: v["state"] for a, v in hour["agents"].items()}
        self.assertEqual((states["planner"], states["scout"], hour["global"]["state"]), ("over", "warning", "ok"))
        for period, entry in budget["periods"].items():
            for agent, line in [(None, entry["global"])] + sorted(entry["agents"].items()):
                with self.subTest(period=period, agent=agent):
                    node = self.line(period, agent)
                    self.assertEqual(node.get_attribute("data-state"), line["state"])
                    # the state in words, not colour alone
                    self.assertEqual(node.locator(".badge").text_content(),
                                     {"ok": "ok", "warning": "warning", "over": "over", "none": "no budget"}[line["state"]])
                    self.assertEqual(node.locator(".bnums").text_content(), "%s of %s · %d%%" % (
                        self.fmt("usd", line["spend_usd"]), self.fmt("usd", line["budget_usd"]), round(line["pct"])))
                    self.assertIn("state-" + line["state"], node.locator(".bar").get_attribute("class"))
                    width = node.locator(".bar > span").evaluate("e => parseFloat(e.style.width)")
                    self.assertAlmostEqual(width, min(100.0, line["pct"]), delta=0.06)
                    if agent:
                        self.assertIn("(inherited)" if line["inherited"] else "(own)", node.locator(".bname").text_content())
        # the agent over its budget is listed first; the alert it raised is shown
        self.assertEqual(self.page.get_attribute("#budget-body .bline[data-period=hour][data-scope=agent]", "data-agent"),
                         "planner")
        self.assertEqual(budget["alerts"][0]["key"].split("/")[:3], ["hour", "agent", "planner"])
        self.assertIn("planner: hourly budget crossed", self.page.text_content("#budget-body .alerts-list"))

    def test_agent_filter_shows_that_agent_only(self):
        self.open("#agent=scout")
        lines = self.page.locator("#budget-body .bline[data-period=hour]")
        self.assertEqual([lines.nth(i).get_attribute("data-agent") for i in range(lines.count())], ["", "scout"])
        self.assertEqual(self.line("hour", "scout").get_attribute("data-state"), "warning")
        self.assertEqual(self.page.locator("#budget-body .alerts-list").count(), 0)      # planner's alert

    def open_settings(self):
        self.open()
        self.page.click("#open-settings")
        self.page.wait_for_selector("#agent-budgets .row[data-agent=planner]")

    def save(self):
        self.page.click("#save-settings")
        self.page.wait_for_function("() => /^(Saved|Not saved|Nothing)/.test(document.getElementById('settings-msg').textContent)")
        return self.page.text_content("#settings-msg"), self.page.get_attribute("#settings-msg", "class")

    def test_budget_settings_round_trip(self):
        self.open_settings()
        b = self.budgets
        self.assertAlmostEqual(float(self.page.input_value("#set-hourly")), b["hourly_budget_usd"], places=9)
        self.assertAlmostEqual(float(self.page.input_value("#set-daily")), b["daily_budget_usd"], places=9)
        self.assertEqual(self.page.input_value("#set-webhook"), "")
        planner = self.page.locator("#agent-budgets .row[data-agent=planner]")
        scout = self.page.locator("#agent-budgets .row[data-agent=scout]")
        hourly = "input[data-key=hourly_budget_usd]"
        daily = "input[data-key=daily_budget_usd]"
        self.assertAlmostEqual(float(planner.locator(hourly).input_value()),
                               b["agents"]["planner"]["hourly_budget_usd"], places=9)
        self.assertEqual(planner.locator(daily).input_value(), "")
        self.assertEqual(planner.locator(daily).get_attribute("placeholder"), "inherit")
        self.assertIn("inherits %s/day" % self.fmt("usd", b["daily_budget_usd"]), planner.locator(".hint").text_content())
        # change: the global daily budget, a webhook, planner's own daily budget; scout back to inherit
        self.page.fill("#set-daily", "50")
        self.assertIn("$50.00 a day", self.page.text_content("#set-daily-hint"))
        self.page.fill("#set-webhook", "http://127.0.0.1:9/budget-hook")
        planner.locator(daily).fill("5")
        scout.locator(hourly).fill("")
        self.assertIn("inherits %s/hour" % self.fmt("usd", b["hourly_budget_usd"]), scout.locator(".hint").text_content())
        n = self.roadmap_round()
        text, cls = self.save()
        self.assertTrue(text.startswith("Saved at"), text)
        self.assertEqual(cls, "ok")
        settings = self.get("/api/settings")
        self.assertEqual(settings["daily_budget_usd"], 50)
        self.assertEqual(settings["hourly_budget_usd"], b["hourly_budget_usd"])            # not sent, not changed
        self.assertEqual(settings["budget_webhook_url"], "http://127.0.0.1:9/budget-hook")
        self.assertEqual(settings["agents"]["planner"]["daily_budget_usd"], 5)
        self.assertEqual(settings["agents"]["planner"]["hourly_budget_usd"], b["agents"]["planner"]["hourly_budget_usd"])
        self.assertIsNone(settings["agents"]["scout"]["hourly_budget_usd"])
        self.assertEqual(settings["session_char_limit"], td.GLOBAL_LIMIT)
        # the view follows: scout now inherits the global hourly budget, planner has its own daily one
        self.wait_views(n)
        budget = self.get("/api/budget")
        scout_line = self.line("hour", "scout")
        self.assertEqual(scout_line.get_attribute("data-state"), budget["periods"]["hour"]["agents"]["scout"]["state"])
        self.assertIn("(inherited)", scout_line.text_content())
        self.assertIn("(own)", self.line("day", "planner").text_content())
        self.assertIn("of $5.00", self.line("day", "planner").text_content())
        self.assertIn("of $50.00", self.line("day").text_content())
        self.assertIn("Webhook: set.", self.page.text_content("#budget-body"))
        self.assertEqual(self.save()[0], "Nothing changed.")

    def test_invalid_budget_shows_the_api_error(self):
        self.open_settings()
        self.allowed_console = ("status of 400",)
        cases = (("#set-hourly", "-5", {"hourly_budget_usd": -5}),
                 ("#set-webhook", "ftp://example.invalid/x", {"budget_webhook_url": "ftp://example.invalid/x"}),
                 ("#agent-budgets .row[data-agent=planner] input[data-key=daily_budget_usd]", "-1",
                  {"agents": {"planner": {"daily_budget_usd": -1}}}))
        for selector, value, body in cases:
            with self.subTest(field=selector):
                before = self.page.input_value(selector)
                self.page.fill(selector, value)
                text, cls = self.save()
                expected = self.request("POST", "/api/settings", body, JSON_HEADERS)
                self.assertEqual(expected.status, 400)
                self.assertEqual(text, "Not saved: " + expected.json()["error"])
                self.assertEqual(cls, "error")
                self.page.fill(selector, before)
        settings = self.get("/api/settings")
        self.assertEqual(settings["hourly_budget_usd"], self.budgets["hourly_budget_usd"])
        self.assertIsNone(settings["budget_webhook_url"])
        self.assertIsNone(settings["agents"]["planner"]["daily_budget_usd"])

    def test_budget_button_opens_the_settings(self):
        self.open()
        self.page.click("#budget-body button[data-action=budget-settings]")
        self.page.wait_for_selector("#agent-budgets .row")
        self.assertTrue(self.page.is_visible("#settings"))
        self.assertEqual(self.page.evaluate("document.activeElement.id"), "set-hourly")


# ---------------------------------------------------------------------------
# 4. Session history
# ---------------------------------------------------------------------------

class SessionHistoryViewTests(RoadmapCase):

    def pick(self, agent):
        draws = self.draws("session-history")
        self.page.select_option("#history-agent", agent)
        self.wait_draw("session-history", draws)

    def test_timeline_shows_the_automatic_reset(self):
        self.open()
        self.pick("openclaw")
        self.assertTrue(any("/api/session-history?agent=openclaw&hours=24" in u for u in self.requests))
        hist = self.get("/api/session-history?agent=openclaw&hours=24")
        sessions = hist["sessions"]
        auto = [s for s in sessions if s["ended_by"] == "auto"]
        self.assertEqual(len(auto), 1)
        self.assertEqual((auto[0]["turns"], auto[0]["peak_history_chars"]), (3, 21000))
        self.assertEqual(sessions[-1]["ended_by"], "active")
        view = self.section("session-history")
        st = hist["stats"]
        self.assertEqual(view.locator("[data-field=sessions]").text_content(), str(st["sessions"]))
        self.assertEqual(view.locator("[data-field=avg_cost]").text_content(), self.fmt("usd", st["avg_cost_usd"]))
        self.assertEqual(view.locator("[data-field=avg_duration]").text_content(), self.fmt("duration", st["avg_duration_s"]))
        self.assertEqual(float(view.locator("[data-field=resets_per_day]").get_attribute("data-raw")), st["resets_per_day"])
        self.assertEqual(view.locator("#history-ended [data-ended=auto]").text_content(), "auto reset 1")
        # the table: every session, newest first
        rows = self.page.locator("#sessions-table tbody tr")
        self.assertEqual(rows.count(), len(sessions))
        self.assertEqual([rows.nth(i).get_attribute("data-ended") for i in range(rows.count())],
                         [s["ended_by"] for s in reversed(sessions)])
        row = self.page.locator("#sessions-table tbody tr[data-ended=auto]")
        cells = row.locator("td").all_text_contents()
        self.assertEqual(cells[4:9], ["3", "21K", self.fmt("usd", auto[0]["cost_usd"]), "0", "auto reset"])
        self.assertEqual(row.get_attribute("data-started"), auto[0]["started"])
        # the timeline: a floating bar per session, coloured by how it ended
        chart = self.rm_chart("session-timeline")
        self.assertEqual(len(chart["labels"]), len(sessions))
        by_label = {d["label"]: d for d in chart["datasets"]}
        self.assertIn("auto reset", by_label)
        self.assertIn("still active", by_label)
        bars = [(i, v) for i, v in enumerate(by_label["auto reset"]["data"]) if v is not None]
        i = sessions.index(auto[0])
        self.assertEqual([b[0] for b in bars], [i])
        start, end = self.page.evaluate("s => [Date.parse(s.started), Date.parse(s.last_turn)]", auto[0])
        self.assertEqual(bars[0][1], [start, end])
        self.assertEqual(len(by_label["still active"]["data"]) - by_label["still active"]["data"].count(None), 1)

    def test_follows_the_agent_filter(self):
        self.open("#agent=openclaw")
        sel = self.page.locator("#history-agent")
        self.assertTrue(sel.is_disabled())
        self.assertEqual(sel.input_value(), "openclaw")
        self.assertTrue(any("/api/session-history?agent=openclaw&hours=24" in u for u in self.requests))
        self.assertEqual(self.page.locator("#sessions-table tbody tr[data-ended=auto]").count(), 1)


# ---------------------------------------------------------------------------
# 5. Stop reasons
# ---------------------------------------------------------------------------

class StopReasonViewTests(RoadmapCase):

    def test_breakdown_truncations_and_timeline(self):
        self.open()
        stop = self.get("/api/stop-reasons?hours=24")
        reasons = {r["stop_reason"]: r for r in stop["reasons"]}
        for r in ("end_turn", "tool_use", "stop", "tool_calls", "max_tokens", "length", "refusal", "stop_sequence", "error"):
            self.assertIn(r, reasons)
        tr = stop["truncations"]
        self.assertEqual(tr["turns"], 2)
        self.assertEqual(self.page.get_attribute("[data-field=truncated_turns]", "data-raw"), "2")
        self.assertEqual(self.page.text_content("[data-field=truncated_share]"),
                         "(%s of %s)" % (self.fmt("pct", tr["share"]), self.fmt("int", stop["turns"])))
        self.assertIn("alert", self.page.get_attribute("#trunc-callout", "class"))
        rows = self.page.locator("#stop-table tbody tr")
        self.assertEqual(rows.count(), len(stop["reasons"]))
        for i, r in enumerate(stop["reasons"]):
            cells = rows.nth(i).locator("td").all_text_contents()
            self.assertEqual([cells[0], cells[2], cells[3]], [r["stop_reason"], self.fmt("int", r["turns"]), self.fmt("pct", r["share"])])
        self.assertEqual(self.page.locator("#stop-table tr.trunc").count(), 2)
        self.assertEqual(self.page.locator("#stop-table tr[data-reason=length] td").nth(1).text_content(), "truncated")
        self.assertEqual(self.page.locator("#stop-table tr[data-reason=refusal] td").nth(1).text_content(), "refusal")
        # the recent truncated turns
        recent = self.page.locator("#trunc-table tbody tr")
        self.assertEqual([recent.nth(i).get_attribute("data-id") for i in range(recent.count())],
                         [str(r["id"]) for r in tr["recent"]])
        self.assertEqual(self.column("#trunc-table", 4), [r["stop_reason"] for r in tr["recent"]])
        self.assertEqual(set(self.column("#trunc-table", 4)), {"max_tokens", "length"})
        # stacked bars by category over the buckets
        chart = self.rm_chart("stop-timeline")
        self.assertEqual(chart["type"], "bar")
        self.assertEqual(len(chart["labels"]), len(stop["buckets"]))
        got = {d["label"]: sum(v or 0 for v in d["data"]) for d in chart["datasets"]}
        text = {"natural": "natural end", "tool_use": "tool use", "truncated": "truncated", "stop_sequence": "stop sequence",
                "refusal": "refusal", "error": "error", "other": "other"}
        self.assertEqual(got, {text[c]: sum(v) for c, v in stop["series"].items()})
        self.assertTrue(self.page.evaluate("Chart.getChart(document.getElementById('rm-stop-timeline')).options.scales.y.stacked"))

    def test_per_model_and_per_agent(self):
        self.open()
        stop = self.get("/api/stop-reasons?hours=24")
        cats = stop["categories"]

        def check(by):
            for name, counts in by.items():
                with self.subTest(name=name):
                    row = self.page.locator("#stop-matrix tbody tr[data-name='%s']" % name)
                    self.assertEqual(row.locator("td").nth(1).text_content(), self.fmt("int", sum(counts.values())))
                    trunc = sum(n for r, n in counts.items() if cats.get(r) == "truncated")
                    cell = row.locator("td[data-category=truncated]")
                    self.assertEqual(int(cell.get_attribute("data-raw")), trunc)
            self.assertEqual(self.page.locator("#stop-matrix tbody tr").count(), len(by))

        check(stop["by_model"])
        self.assertEqual(self.page.get_attribute("#stop-matrix tr[data-name=claude-sonnet-4-6] td[data-category=truncated]",
                                                 "data-raw"), "1")
        draws = self.draws("stop-reasons")
        self.page.click("section[data-view=stop-reasons] .seg button[data-value=agent]")
        self.wait_draw("stop-reasons", draws)
        self.assertEqual(self.page.text_content("#stop-matrix th"), "Agent")
        check(stop["by_agent"])
        self.assertEqual(self.page.get_attribute("#stop-matrix tr[data-name=scout] td[data-category=truncated]", "data-raw"), "1")


# ---------------------------------------------------------------------------
# 6. Tool usage
# ---------------------------------------------------------------------------

class ToolViewTests(RoadmapCase):

    def test_dead_weight_is_flagged_with_its_tokens(self):
        self.open()
        api = self.get("/api/tools?hours=24")
        tools = {t["name"]: t for t in api["tools"]}
        self.assertTrue(tools[DEAD_TOOL]["dead_weight"])
        self.assertFalse(tools["read_file"]["dead_weight"])
        self.assertEqual(self.page.get_attribute("[data-field=dead_tools]", "data-raw"), str(api["dead_weight"]["tools"]))
        self.assertEqual(self.page.get_attribute("[data-field=dead_tokens]", "data-raw"), str(api["dead_weight"]["tokens_sent"]))
        self.assertEqual(self.page.text_content("[data-field=dead_tokens]"),
                         "~%s tokens" % self.fmt("compact", api["dead_weight"]["tokens_sent"]))
        self.assertEqual(self.page.locator("#dead-callout .badge.dead").text_content(), "dead weight")
        self.assertEqual(self.page.locator("#dead-callout li[data-tool='%s']" % DEAD_TOOL).count(), 1)
        rows = self.page.locator("#tools-table tbody tr")
        self.assertEqual(rows.count(), len(tools))
        self.assertEqual(self.page.locator("#tools-table tr.dead").count(), api["dead_weight"]["tools"])
        dead = self.page.locator("#tools-table tr[data-tool='%s']" % DEAD_TOOL)
        self.assertEqual(dead.locator(".badge.dead").text_content(), "dead weight")
        for name in (DEAD_TOOL, "read_file", "bash"):
            t = tools[name]
            with self.subTest(tool=name):
                cells = self.page.locator("#tools-table tr[data-tool='%s'] td" % name).all_text_contents()
                self.assertEqual(cells, [name, "%s turns" % self.fmt("int", t["turns_carrying"]),
                                         "%s chars (~%s tok)" % (self.fmt("int", t["avg_chars"]), self.fmt("int", t["avg_tokens"])),
                                         self.fmt("compact", t["tokens_sent"]), self.fmt("int", t["times_called"]),
                                         self.fmt("pct", t["call_rate"]), "dead weight" if t["dead_weight"] else "used"])
        # a tool called by responses but never defined in a request
        self.assertEqual(self.page.locator("#tools-table tr[data-tool=get_weather] td").last.text_content(), "not defined")
        # the chart: tokens sent per defined tool, dead weight in red
        chart = self.rm_chart("tool-tokens")
        defined = [t for t in api["tools"] if t["turns_carrying"]][:20]
        self.assertEqual(chart["labels"], [short(t["name"], 22) for t in defined])
        self.assertEqual(chart["datasets"][0]["data"], [t["tokens_sent"] for t in defined])
        colors = chart["datasets"][0]["colors"]
        self.assertEqual({c for c, t in zip(colors, defined) if t["dead_weight"]}, {"#f85149"})
        self.assertNotIn("#f85149", [c for c, t in zip(colors, defined) if not t["dead_weight"]])

    def test_sorting(self):
        self.open()
        api = self.get("/api/tools?hours=24")["tools"]
        self.assertEqual(self.column("#tools-table", 1), [t["name"] for t in api])     # most tokens first
        self.assertEqual(self.sort_by("#tools-table", "times_called"), "descending")
        called = [int(x.replace(",", "")) for x in self.column("#tools-table", 5)]
        self.assertEqual(called, sorted(called, reverse=True))
        self.assertEqual(self.sort_by("#tools-table", "status"), "ascending")
        self.assertEqual(self.column("#tools-table", 7)[0], "dead weight")


# ---------------------------------------------------------------------------
# All six: loading, errors, filters, safety, offline, phone
# ---------------------------------------------------------------------------

class RoadmapPageTests(RoadmapCase):

    ENDPOINTS = ("/api/budget", "/api/models", "/api/latency", "/api/session-history", "/api/stop-reasons", "/api/tools")

    def test_views_load_in_parallel_after_the_main_ones(self):
        self.open()
        for name in self.VIEWS:
            self.assertEqual(self.section(name).get_attribute("data-state"), "ok", name)
            self.assertTrue(self.section(name).locator(".view-error").is_hidden())
        timing = self.page.evaluate(r"""() => {
            const e = performance.getEntriesByType('resource');
            const pick = re => e.filter(x => re.test(x.name)).map(x => [x.startTime, x.responseEnd]);
            return {main: pick(/\/api\/(overview|agents|usage)\b/),
                    rm: pick(/\/api\/(budget|models|latency|session-history|stop-reasons|tools)\b/)};
        }""")
        self.assertEqual(len(timing["main"]), 3)
        self.assertEqual(len(timing["rm"]), 6)
        main_done = max(end for _, end in timing["main"])
        self.assertGreaterEqual(min(start for start, _ in timing["rm"]), main_done)   # after the main views' data
        self.assertLess(max(start for start, _ in timing["rm"]), min(end for _, end in timing["rm"]))   # all at once

    def test_a_failing_view_shows_its_own_error(self):
        self.allowed_console = ("status of 500",)
        self.page.route("**/api/latency?*", lambda route: route.fulfill(
            status=500, body=b'{"error": "database is locked", "status": 500}', headers={"Content-Type": "application/json"}))
        self.open()
        latency = self.section("latency")
        self.assertEqual(latency.get_attribute("data-state"), "error")
        self.assertEqual(latency.locator(".view-error").text_content(), "Could not load latency: database is locked.")
        for name in self.VIEWS:
            if name != "latency":
                self.assertEqual(self.section(name).get_attribute("data-state"), "ok", name)
        self.assertTrue(self.page.is_hidden("#banner"))                  # the page itself is fine
        self.assertGreater(self.page.locator("#turns-table tbody tr").count(), 10)
        # it comes back at the next refresh
        self.page.unroute("**/api/latency?*")
        n = self.roadmap_round()
        self.page.click("#refresh")
        self.wait_views(n)
        self.assertEqual(latency.get_attribute("data-state"), "ok")
        self.assertTrue(latency.locator(".view-error").is_hidden())
        self.assertGreater(self.page.locator("#outliers-table tbody tr.outlier").count(), 0)

    def test_views_follow_the_time_range_and_the_agent_filter(self):
        self.open()
        n = self.roadmap_round()
        self.page.select_option("#agent-filter", "scout")
        self.wait_views(n)
        for path in ("/api/models?hours=24&agent=scout", "/api/latency?hours=24&agent=scout",
                     "/api/stop-reasons?hours=24&agent=scout", "/api/tools?hours=24&agent=scout",
                     "/api/session-history?agent=scout&hours=24"):
            self.assertTrue(any(path in u for u in self.requests), path)
        models = self.get("/api/models?hours=24&agent=scout")["models"]
        self.assertEqual(sorted(self.column("#models-table", 1)), sorted(m["model"] for m in models))
        self.assertIn(UNPRICED_MODEL, self.column("#models-table", 1))
        self.assertNotIn("claude-sonnet-4-6", self.column("#models-table", 1))
        n = self.roadmap_round()
        self.page.click("#ranges button[data-range='7d']")
        self.wait_views(n)
        for path in ("/api/models?hours=168&agent=scout", "/api/latency?hours=168&agent=scout",
                     "/api/stop-reasons?hours=168&agent=scout", "/api/tools?hours=168&agent=scout",
                     "/api/session-history?agent=scout&hours=168"):
            self.assertTrue(any(path in u for u in self.requests), path)
        stop = self.get("/api/stop-reasons?hours=168&agent=scout")
        self.assertEqual(self.page.get_attribute("[data-field=truncated_turns]", "data-raw"), str(stop["truncations"]["turns"]))

    def test_charts_are_updated_in_place(self):
        self.open()
        ids = ("model-cost", "model-latency", "model-value", "latency-timeline", "latency-scatter", "session-timeline",
               "stop-timeline", "tool-tokens")
        before = {c: self.rm_chart(c) for c in ids}
        for c, chart in before.items():
            with self.subTest(chart=c):
                self.assertIsNotNone(chart)
                self.assertTrue(any(any(v is not None for v in d["data"]) for d in chart["datasets"]), c)
        self.rturn("planner", "messages", "claude-sonnet-4-6", 40000)
        self.wait_rows(self.history_rows + self.turns_proxied)
        n = self.roadmap_round()
        self.page.click("#refresh")
        self.wait_views(n)
        self.assertEqual({c: self.rm_chart(c)["id"] for c in ids}, {c: chart["id"] for c, chart in before.items()})
        turns = [m["turns"] for m in self.get("/api/models?hours=24")["models"] if m["model"] == "claude-sonnet-4-6"][0]
        self.assertEqual(self.page.locator("#models-table tr[data-model=claude-sonnet-4-6] td").nth(1).text_content(),
                         self.fmt("int", turns))

    def test_xss_probe_stays_text_in_every_view(self):
        self.page.add_init_script("window.__alerts = []; window.alert = m => window.__alerts.push(String(m));")
        self.open()
        # a model and a tool definition named <img src=x onerror=alert(1)>, a stop reason <b ...>
        model = self.page.locator("#models-table tbody tr[data-model='%s']" % XSS_MODEL)
        self.assertEqual(model.locator("td").first.text_content(), XSS_MODEL)
        tool = self.page.locator("#tools-table tbody tr[data-tool='%s']" % XSS_TOOL_DEF)
        self.assertEqual(tool.locator("td").first.text_content(), XSS_TOOL_DEF)
        self.assertEqual(tool.locator(".badge").text_content(), "dead weight")
        self.assertEqual(self.page.locator("#dead-callout li[data-tool='%s'] .name" % XSS_TOOL_DEF).text_content(), XSS_TOOL_DEF)
        self.assertEqual(self.page.locator("#tools-table tbody tr[data-tool='%s'] td" % td.XSS_TOOL).first.text_content(),
                         td.XSS_TOOL)
        self.assertEqual(self.page.locator("#stop-matrix tbody tr[data-name='%s'] td" % XSS_MODEL).first.text_content(), XSS_MODEL)
        self.assertEqual(self.page.locator("#stop-table tbody tr[data-reason='%s'] td" % td.XSS_STOP).first.text_content(),
                         td.XSS_STOP)
        self.assertIn(XSS_MODEL, [d["label"] for d in self.rm_chart("latency-timeline")["datasets"]])
        self.assertIn(short(XSS_MODEL), self.rm_chart("model-cost")["labels"])
        self.assertEqual(self.page.locator("img").count(), 0)
        self.assertEqual(self.page.locator("main svg, main b").count(), 0)
        self.page.wait_for_timeout(300)
        self.assertEqual(self.page.evaluate("window.__alerts"), [])
        self.assertEqual(self.dialogs, [])

    def test_offline_the_views_are_tables(self):
        self.allowed_console = ("Failed to load resource", "ERR_INTERNET_DISCONNECTED", "net::ERR_FAILED")
        self.open(cdn="abort", local="404")
        self.assertEqual(self.page.evaluate("document.body.dataset.charts"), "none")
        for cid in ("model-cost", "model-latency", "model-value", "latency-timeline", "latency-scatter", "session-timeline",
                    "stop-timeline", "tool-tokens"):
            with self.subTest(chart=cid):
                box = self.page.locator("[data-rmchart='%s']" % cid)
                self.assertTrue(box.locator("canvas").is_hidden())
                self.assertTrue(box.locator(".fallback table").is_visible())
                self.assertGreater(box.locator(".fallback tbody tr").count(), 0)
        models = self.get("/api/models?hours=24")["models"]
        cells = self.page.locator("[data-rmchart=model-cost] .fallback tbody td").all_text_contents()
        self.assertEqual(cells, [x for m in models for x in (m["model"], self.fmt("usd", m["cost_per_turn"]))])
        lat = self.get("/api/latency?hours=24")
        above = self.page.locator("[data-rmchart=latency-scatter] .fallback tbody td:nth-child(3)").all_text_contents()
        self.assertEqual(above.count("yes"), len(lat["outliers"]))
        # the tables, callouts and budgets need no Chart.js
        self.assertEqual(self.page.locator("#models-table tbody tr").count(), len(models))
        self.assertEqual(self.page.locator("#tools-table tr[data-tool='%s'] .badge.dead" % DEAD_TOOL).count(), 1)
        self.assertEqual(self.page.get_attribute("#budget-body .bline[data-period=hour][data-agent=planner]", "data-state"), "over")

    def test_phone_viewport_has_no_horizontal_overflow(self):
        self.page.set_viewport_size({"width": 390, "height": 844})
        self.open()
        widths = self.page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
        self.assertLessEqual(max(widths[:2]), widths[2], widths)
        for name in self.VIEWS:
            box = self.section(name).bounding_box()
            self.assertLessEqual(box["x"] + box["width"], 390, name)
        # wide tables scroll inside their own container
        for table in ("#models-table", "#tools-table", "#outliers-table", "#sessions-table", "#stop-matrix"):
            with self.subTest(table=table):
                sizes = self.page.evaluate("""sel => { const t = document.querySelector(sel), w = t.closest('.table-wrap');
                    const r = w.getBoundingClientRect(); return [t.scrollWidth, w.clientWidth, r.right]; }""", table)
                self.assertLessEqual(sizes[2], 390)
                if table == "#models-table":
                    self.assertGreater(sizes[0], sizes[1])
        self.page.click("#open-settings")
        self.page.wait_for_selector("#agent-budgets .row")
        widths = self.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth, "
                                    "document.getElementById('settings').scrollWidth, document.getElementById('settings').clientWidth]")
        self.assertLessEqual(widths[0], widths[1])
        self.assertLessEqual(widths[2], widths[3])
        for sel in ("#set-webhook", "#agent-budgets .row[data-agent=planner] input[data-key=daily_budget_usd]"):
            box = self.page.locator(sel).bounding_box()
            self.assertLessEqual(box["x"] + box["width"], 390, sel)


class RoadmapEmptyTests(RoadmapCase):
    """A fresh install: no turns, no budgets."""

    def seed(self):
        self.turns_proxied = 0

    def test_every_view_says_there_is_nothing_yet(self):
        self.open()
        for name in self.VIEWS:
            self.assertEqual(self.section(name).get_attribute("data-state"), "ok", name)
        self.assertEqual(self.page.text_content("#models-table tbody"), "No turns in this range.")
        self.assertEqual(self.page.text_content("#outliers-table tbody"), "No outliers in this range.")
        self.assertEqual(self.page.text_content("#tools-table tbody"), "No turns in this range.")
        self.assertIn("no dead weight", self.page.text_content("#dead-callout"))
        self.assertEqual(self.page.get_attribute("[data-field=truncated_turns]", "data-raw"), "0")
        self.assertEqual(self.page.text_content("#sessions-table tbody"), "No sessions in this range.")
        self.assertIn("No budget is set.", self.page.text_content("#budget-body"))
        self.assertEqual(self.page.get_attribute("#budget-body .bline[data-period=hour][data-scope=global]", "data-state"),
                         "none")
        for box in self.page.locator("[data-rmchart]").all():
            with self.subTest(chart=box.get_attribute("data-rmchart")):
                self.assertEqual(box.get_attribute("data-has-data"), "false")
                self.assertTrue(box.locator(".empty").is_visible())
        self.assertEqual(self.page.text_content("[data-rmchart=session-timeline] .empty"), "No sessions in this range")


if __name__ == "__main__":
    unittest.main()
