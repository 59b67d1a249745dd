#!/usr/bin/env python3
"""How fast the JSON API answers on a big database: 1,000,000 turns over 30 days.

    python3 bench/analytics_1m.py [--rows N] [--db PATH] [--rebuild] [--runs 3] [--json]

1. Builds (once; reused while the file has the expected rows) a SQLite file through
   tokenspy_db.Store.insert_turns in batches of 5,000: 8 agents, 12 models (one of them
   without a price), timestamps spread over 30 days, ~2 % failed turns, a mix of stop
   reasons per API, tool sets (`tool_defs`) and `tools_called` lists, conversation
   histories that grow and are reset (auto, manual, session manager, or a fresh start;
   the resets are recorded in the resets table as Token Spy would). Costs come from
   prices.json (tokenspy.Prices), like the recorder's.
2. Starts a Token Spy in this process (--port 0 --db FILE, its own settings file with
   hourly and daily budgets) and times every GET endpoint with ?hours=1, 24, 720 and
   all: the median of --runs runs, wall time of one request on a fresh connection.

The default file is /tmp/tokenspy_analytics_1m.db (about 0.8 GB); building it takes a
minute or two.
"""

import argparse
import http.client
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tokenspy  # noqa: E402
import tokenspy_db  # noqa: E402

DAYS = 30
BATCH = 5000
SEED = 20261204

AGENTS = ("main", "coder", "reviewer", "ops", "research", "support", "scheduler", "writer")
AGENT_WEIGHTS = (30, 25, 10, 10, 8, 7, 5, 5)
# model, provider, api; "qwen3-coder-local" has no price (unpriced turns)
MODELS = {
    "claude-sonnet-4-6": ("anthropic", "messages"), "claude-opus-4-6": ("anthropic", "messages"),
    "claude-haiku-4-5": ("anthropic", "messages"), "gpt-5": ("openai", "responses"),
    "gpt-5-mini": ("openai", "chat"), "gpt-5-nano": ("openai", "chat"), "gpt-4.1": ("openai", "chat"),
    "o3": ("openai", "responses"), "deepseek-v4-pro": ("openai", "chat"), "kimi-k2.6": ("openai", "chat"),
    "gemini-2.5-pro": ("openai", "chat"), "qwen3-coder-local": ("openai", "chat"),
}
AGENT_MODELS = {
    "main": ("claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5"),
    "coder": ("claude-opus-4-6", "claude-sonnet-4-6", "gpt-5"),
    "reviewer": ("gpt-5", "o3", "claude-sonnet-4-6"),
    "ops": ("gpt-5-mini", "deepseek-v4-pro", "qwen3-coder-local"),
    "research": ("gemini-2.5-pro", "o3", "gpt-4.1"),
    "support": ("claude-haiku-4-5", "gpt-5-nano", "kimi-k2.6"),
    "scheduler": ("gpt-5-nano", "qwen3-coder-local"),
    "writer": ("claude-sonnet-4-6", "kimi-k2.6", "gpt-5-mini"),
}
TOOLSETS = {
    "code": [("Read", 910), ("Write", 1120), ("Edit", 1530), ("Bash", 2410), ("Grep", 820), ("Glob", 610),
             ("WebFetch", 700), ("TodoWrite", 1810)],
    "code+mcp": [("Read", 910), ("Write", 1120), ("Edit", 1530), ("Bash", 2410), ("Grep", 820), ("Glob", 610),
                 ("WebFetch", 700), ("TodoWrite", 1810), ("mcp__github__create_issue", 2200),
                 ("mcp__github__list_prs", 1900), ("mcp__slack__post_message", 1400), ("NotebookEdit", 1300)],
    "claw": [("exec", 1210), ("read", 500), ("write", 610), ("web_search", 30), ("cron", 900),
             ("message", 700), ("browser", 2600)],
    "mini": [("get_weather", 300), ("lookup", 250)],
}
# never called: dead weight in the tools view
NEVER_CALLED = {"mcp__slack__post_message", "NotebookEdit", "cron", "browser"}
AGENT_TOOLSETS = {"main": ("claw",), "coder": ("code", "code+mcp"), "reviewer": ("code",), "ops": ("claw",),
                  "research": ("mini", "claw"), "support": ("mini",), "scheduler": ("claw",), "writer": ()}
SESSION_ID_AGENTS = {"coder", "reviewer"}          # send a client session id, like Claude Code / Codex
STOPS = {
    "messages": (("tool_use", 50), ("end_turn", 40), ("max_tokens", 4), ("stop_sequence", 2), ("refusal", 1),
                 ("pause_turn", 3)),
    "chat": (("tool_calls", 45), ("stop", 47), ("length", 5), ("content_filter", 3)),
    "responses": (("completed", 95), ("max_output_tokens", 5)),
}
ERRORS = ((429, "rate_limit_error: Number of request tokens has exceeded your per-minute rate limit"),
          (500, "api_error: Internal server error"), (529, "overloaded_error: Overloaded"),
          (502, "upstream unreachable: [Errno 111] Connection refused"))
PATHS = {"messages": "/v1/messages?beta=true", "chat": "/v1/chat/completions", "responses": "/v1/responses"}
UPSTREAMS = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com"}


def _pick(rng, pairs):
    total = sum(w for _, w in pairs)
    x = rng.random() * total
    for item, w in pairs:
        x -= w
        if x < 0:
            return item
    return pairs[-1][0]


class Agent:
    def __init__(self, name, rng):
        self.name = name
        self.rng = rng
        self.limit = rng.choice((150000, 200000, 300000, 400000))
        self.session = 0
        self.new_session()

    def new_session(self):
        self.session += 1
        self.history = self.rng.randint(800, 4000)
        self.turn = 0
        self.sid = "%s-%06d" % (self.name, self.session) if self.name in SESSION_ID_AGENTS else None


def build(path, n, seed=SEED):
    """Write n turns (and their resets) to a new file at `path`."""
    rng = random.Random(seed)
    prices = tokenspy.Prices()
    price_of = {m: prices.lookup(m) for m in MODELS}
    agents = {a: Agent(a, rng) for a in AGENTS}
    store = tokenspy_db.Store(path)
    now = time.time()
    start = now - DAYS * 86400
    step = DAYS * 86400.0 / n
    resets = []
    batch = []
    t_build = time.time()
    for i in range(n):
        t = start + (i + rng.random()) * step
        name = _pick(rng, list(zip(AGENTS, AGENT_WEIGHTS)))
        ag = agents[name]
        model = rng.choice(AGENT_MODELS[name])
        provider, api = MODELS[model]
        # the conversation grows; past the limit it is reset (or the agent starts afresh)
        ag.turn += 1
        ag.history += rng.randint(300, 6000)
        if ag.history > ag.limit * rng.uniform(1.0, 1.3):
            how = _pick(rng, (("auto", 60), ("manual", 15), ("session-manager", 10), ("fresh", 15)))
            if how != "fresh":
                resets.append((tokenspy_db.iso_utc(t - 0.5), name, "sess-%s-%d" % (name, ag.session), how,
                               "history over limit", ag.history))
            ag.new_session()
        history = ag.history
        sets = AGENT_TOOLSETS[name]
        tools = TOOLSETS[rng.choice(sets)] if sets and rng.random() < 0.92 else None
        tool_chars = sum(c for _, c in tools) if tools else 0
        system = 12000 + (len(name) * 997) % 9000
        prompt = (history + system + tool_chars) // 4
        status, error, usage_source, stop = 200, None, "provider", _pick(rng, STOPS[api])
        row = {
            "timestamp": tokenspy_db.iso_utc(t), "ts": int(t * 1000), "agent": name, "provider": provider,
            "api": api, "upstream": UPSTREAMS[provider], "method": "POST", "path": PATHS[api],
            "model": model, "requested_model": model, "response_model": model, "stream": int(rng.random() < 0.7),
            "request_id": "req_%016x" % rng.getrandbits(64), "client_session_id": ag.sid,
            "request_body_bytes": history + system + tool_chars + 300,
            "message_count": 1 + 2 * ag.turn, "user_message_count": 1 + ag.turn, "assistant_message_count": ag.turn,
            "conversation_history_chars": history, "system_prompt_total_chars": system,
            "workspace_agents_chars": 3000 if name in ("main", "ops") else 0,
            "workspace_soul_chars": 800 if name in ("main", "ops") else 0,
            "skill_injection_chars": 2500 if name in ("main", "ops", "research") else 0,
            "base_prompt_chars": system - (6300 if name in ("main", "ops") else 2500 if name == "research" else 0),
            "tool_count": len(tools) if tools else 0, "tool_defs_chars": tool_chars,
        }
        if tools:
            row["tool_defs"] = tools
        if rng.random() < 0.02:
            status, error = rng.choice(ERRORS)
            row.update(status=status, error=error, usage_source="missing", stop_reason=None,
                       duration_ms=rng.randint(50, 3000), ttfb_ms=rng.randint(40, 2500), response_body_bytes=180,
                       price_version=prices.version)
            batch.append(row)
        else:
            first = ag.turn == 1
            cache_write = prompt if first else rng.randint(0, 3000)
            cache_read = 0 if first else max(0, prompt - cache_write - rng.randint(50, 1500))
            inp = max(0, prompt - cache_read - cache_write)
            out = rng.randint(20, 800) if stop not in ("max_tokens", "length", "max_output_tokens") else 4096
            ttfb = int(250 + prompt / 150 + rng.expovariate(1 / 300.0))
            duration = int(ttfb + out * rng.uniform(8, 25) + rng.expovariate(1 / 200.0))
            if rng.random() < 0.01:
                duration *= 5                                   # the slow tail
            row.update(status=status, usage_source=usage_source, stop_reason=stop, input_tokens=inp,
                       output_tokens=out, cache_read_tokens=cache_read, cache_write_tokens=cache_write,
                       cache_write_5m_tokens=cache_write, cache_write_1h_tokens=0,
                       reasoning_tokens=out // 3 if model in ("o3", "gpt-5") else None,
                       usage_raw=json.dumps({"input_tokens": inp, "cache_read_input_tokens": cache_read,
                                             "cache_creation_input_tokens": cache_write, "output_tokens": out},
                                            separators=(",", ":")),
                       duration_ms=duration, ttfb_ms=ttfb, response_body_bytes=out * 4 + 400)
            if stop in ("tool_use", "tool_calls") and tools:
                callable_ = [nm for nm, _ in tools if nm not in NEVER_CALLED]
                row["tools_called"] = json.dumps(rng.sample(callable_, min(len(callable_), rng.randint(1, 3))))
            key, entry = price_of[model]
            row["price_version"] = prices.version
            if entry is not None:
                parts = prices.cost_parts(entry, row, t)
                row.update(estimated_cost_usd=parts["total"], cost_input_usd=parts["input"],
                           cost_output_usd=parts["output"], cost_cache_read_usd=parts["cache_read"],
                           cost_cache_write_usd=parts["cache_write"], cache_savings_usd=parts["savings"],
                           price_entry=key)
            batch.append(row)
        if len(batch) >= BATCH:
            store.insert_turns(batch)
            batch = []
            if (i + 1) % 100000 == 0:
                print("  %7d rows  %5.1f s" % (i + 1, time.time() - t_build), file=sys.stderr, flush=True)
    if batch:
        store.insert_turns(batch)
    store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT OR IGNORE INTO resets (timestamp, agent, session_id, reason, detail, "
                         "history_chars) VALUES (?, ?, ?, ?, ?, ?)", resets)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return len(resets)


def ensure_db(path, n, rebuild):
    if not rebuild and os.path.exists(path):
        try:
            conn = sqlite3.connect(path)
            have = conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            have = -1
        if have == n:
            print("reusing %s (%d turns)" % (path, n), file=sys.stderr)
            return
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    tmp = path + ".building"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(tmp + suffix):
            os.remove(tmp + suffix)
    print("building %s: %d turns ..." % (path, n), file=sys.stderr)
    started = time.time()
    resets = build(tmp, n)
    os.rename(tmp, path)
    print("built in %.1f s (%d resets, %.0f MB)" % (time.time() - started, resets, os.path.getsize(path) / 1e6),
          file=sys.stderr)


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        started = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError("%s -> %d %s" % (path, resp.status, body[:300]))
    return elapsed, len(body)


ENDPOINTS = (
    # (label, path template; {h} = hours, {n} = hours with 'all' as 87840 (10 years), {a} = an agent)
    ("/api/overview", "/api/overview?hours={h}"),
    ("/api/agents", "/api/agents"),
    ("/api/usage", "/api/usage?hours={n}&limit=100"),      # no 'all' here: 10 years instead
    ("/api/summary", "/api/summary?hours={n}"),
    ("/api/models", "/api/models?hours={h}"),
    ("/api/latency", "/api/latency?hours={h}"),
    ("/api/stop-reasons", "/api/stop-reasons?hours={h}"),
    ("/api/tools", "/api/tools?hours={h}"),
    ("/api/session-history", "/api/session-history?agent={a}&hours={h}"),
    ("/api/budget", "/api/budget"),
    ("/api/session-status", "/api/session-status?agent={a}"),
)
HOURS = ("1", "24", "720", "all")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000000)
    parser.add_argument("--db", default=os.path.join(tempfile.gettempdir(), "tokenspy_analytics_1m.db"))
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agent", default="main", help="agent for session-history and session-status")
    parser.add_argument("--only", help="comma-separated endpoint labels to time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ensure_db(args.db, args.rows, args.rebuild)

    work = tempfile.mkdtemp(prefix="tokenspy-bench-")
    settings = os.path.join(work, "settings.json")
    with open(settings, "w") as fh:
        json.dump({"hourly_budget_usd": 5, "daily_budget_usd": 100, "agents": {"coder": {"daily_budget_usd": 40}}}, fh)
    import logging
    logging.getLogger("tokenspy").setLevel(logging.WARNING)
    config = tokenspy.load_config(["--port", "0", "--db", args.db, "--settings", settings, "--agent", args.agent,
                                   "--upstream", "http://127.0.0.1:9", "--log-level", "warning"], environ={})
    app = tokenspy.TokenSpy(config).start()
    only = set(args.only.split(",")) if args.only else None
    results = {}
    try:
        for label, template in ENDPOINTS:
            if only and label not in only:
                continue
            results[label] = {}
            for h in HOURS:
                if "{h}" not in template and "{n}" not in template and h != HOURS[0]:
                    results[label][h] = results[label][HOURS[0]]      # no hours parameter
                    continue
                path = template.format(h=h, n="87840" if h == "all" else h, a=args.agent)
                samples = [get(app.port, path) for _ in range(args.runs)]
                results[label][h] = {"ms": round(statistics.median(s[0] for s in samples) * 1000, 1),
                                     "bytes": samples[-1][1]}
                print("  %-22s hours=%-4s %9.1f ms  %8d bytes" % (label, h, results[label][h]["ms"], samples[-1][1]),
                      file=sys.stderr, flush=True)
    finally:
        app.close()
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print("\nmedian of %d runs, ms per request; %d turns over %d days; %s" % (
        args.runs, args.rows, DAYS, "SQLite " + sqlite3.sqlite_version))
    print("%-22s %10s %10s %10s %10s" % (("endpoint",) + tuple("hours=" + h for h in HOURS)))
    for label, row in results.items():
        print("%-22s %10s %10s %10s %10s" % ((label,) + tuple("%.1f" % row[h]["ms"] for h in HOURS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
