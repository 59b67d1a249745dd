"""Accounting tests: usage extraction, the Flow -> build_row path, prices and request metrics.

Every expected number below is worked out by hand from the fixtures in tests/fixtures/ and
from shared/reference/wire-formats.md (sections 1.3-1.5, 2.3-2.5, 3.2-3.4, 4, 6, 8), with
the arithmetic in a comment. None of them was copied from Token Spy's own output.
Rates are USD per 1M tokens, so a cost is sum(tokens x rate) / 1e6.

Run: python3 -m unittest tests.test_usage -v
"""

import calendar
import email.message
import gzip
import json
import os
import shutil
import tempfile
import unittest
import zlib

import tokenspy
import tokenspy_db
from tests.fake_upstream import (FIXTURES, openai_chat_stream_body, random_chunks, responses_incomplete_stream_body,
                                 sse_events)

SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"
THURSDAY = calendar.timegm((2026, 12, 3, 0, 0, 0))   # 2026-12-03 00:00 UTC, a Thursday (a weekday)
NOON = THURSDAY + 12 * 3600                         # 12:00 UTC: DeepSeek off-peak
PATHS = {"messages": "/v1/messages", "chat": "/v1/chat/completions", "responses": "/v1/responses",
         "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
TOKEN_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens")

PRICES = tokenspy.Prices()


def usd(per_mtok_sum):
    """Hand-computed sum of tokens x $/MTok -> USD."""
    return per_mtok_sum / 1e6


def request_body(api, model, stream):
    if api == "responses":
        return json.dumps({"model": model, "input": "Weather in Paris?", "stream": stream}).encode()
    return json.dumps({"model": model, "max_tokens": 1024, "stream": stream,
                       "messages": [{"role": "user", "content": "Weather in Paris?"}]}).encode()


def make_flow(api, chunks, ctype=SSE, request=b"{}", agent="tester", started=NOON, encoding=None,
              status=200, error=None):
    """A Flow filled the way the relay fills it (Flow.add per chunk as relayed)."""
    headers = email.message.Message()
    headers["Content-Type"] = JSON
    headers["X-Claude-Code-Session-Id"] = "sess-123"
    provider = "anthropic" if api == "messages" else "openai"
    flow = tokenspy.Flow(agent, provider, api, "https://upstream.example", "POST", PATHS[api], headers, request)
    flow.started = started
    flow.status = status
    flow.response_headers = [("Content-Type", ctype), ("request-id", "req_abc")]
    if encoding:
        flow.response_headers.append(("Content-Encoding", encoding))
    for chunk in chunks:
        flow.add(chunk)
    flow.ttfb = flow.t0 + 0.05
    flow.t_end = flow.t0 + 0.5
    flow.error = error
    return flow


def row_for(api, body, ctype=SSE, local=None, **kw):
    return tokenspy.build_row(make_flow(api, [body], ctype, **kw), PRICES, local or {})


def comparable(row):
    row = dict(row)
    row.pop("duration_ms", None)
    row.pop("ttfb_ms", None)
    return row


def random_pieces(data, seed, max_len=40):
    return random_chunks(data, max_len, seed)


def sse(*events):
    """Anthropic-style SSE (event: line + data: line) from (name, obj) pairs."""
    return b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(obj).encode()) for name, obj in events)


def data_sse(*objs):
    """OpenAI-chat-style SSE (data: lines only, then [DONE])."""
    return b"".join(b"data: %s\n\n" % json.dumps(o).encode() for o in objs) + b"data: [DONE]\n\n"


# ---------------------------------------------------------------------------
# Expected readings of every fixture, derived by hand
# ---------------------------------------------------------------------------

# Anthropic (sec. 1.3 / 1.5 and sec. 8): input 472 is already uncached; cache write 2048, all 1h
# (cache_creation.ephemeral_1h_input_tokens = 2048, 5m = 0); cache read 10240; output 89 from
# the last message_delta (message_start's 3 is a placeholder).
# claude-sonnet-4-6: in 3, 1h write 6 (2 x 3), read 0.30, out 15:
#   472*3 + 2048*6 + 10240*0.30 + 89*15 = 1416 + 12288 + 3072 + 1335 = 18111 -> $0.018111
ANTHROPIC = dict(input_tokens=472, output_tokens=89, cache_read_tokens=10240, cache_write_tokens=2048,
                 cache_write_5m_tokens=0, cache_write_1h_tokens=2048, reasoning_tokens=None,
                 stop_reason="tool_use", tools=["get_weather"], model="claude-sonnet-4-6",
                 price_entry="claude-sonnet-4-6", usage_source="provider", cost=usd(18111), error=None)

# Anthropic mid-stream error: only message_start usage is known: input 25, cache 0/0, output 1
# (placeholder). No message_delta -> partial; no cache_creation split -> the 0 writes are 5m.
#   25*3 + 1*15 = 90 -> $0.00009
ANTHROPIC_ERROR = dict(input_tokens=25, output_tokens=1, cache_read_tokens=0, cache_write_tokens=0,
                       cache_write_5m_tokens=0, cache_write_1h_tokens=0, reasoning_tokens=None,
                       stop_reason=None, tools=[], model="claude-sonnet-4-6", price_entry="claude-sonnet-4-6",
                       usage_source="partial", cost=usd(90), error="overloaded_error")

# OpenAI chat (sec. 2.3): prompt 1843 includes cached 1536 -> uncached input 1843 - 1536 = 307;
# output 212 includes reasoning 192; no cache_write_tokens field -> 0 written.
# gpt-5-2025-08-07 -> gpt-5 (in 1.25, read 0.125, out 10):
#   307*1.25 + 1536*0.125 + 212*10 = 383.75 + 192 + 2120 = 2695.75 -> $0.00269575
OPENAI_CHAT = dict(input_tokens=307, output_tokens=212, cache_read_tokens=1536, cache_write_tokens=0,
                   cache_write_5m_tokens=0, cache_write_1h_tokens=0, reasoning_tokens=192,
                   stop_reason="tool_calls", tools=["get_weather"], model="gpt-5-2025-08-07",
                   price_entry="gpt-5", usage_source="provider", cost=usd(2695.75), error=None)

# Same stream without the include_usage chunk (sec. 2.5): no usage at all -> every count unknown.
OPENAI_CHAT_NO_USAGE = dict(OPENAI_CHAT, input_tokens=None, output_tokens=None, cache_read_tokens=None,
                            cache_write_tokens=None, cache_write_5m_tokens=None, cache_write_1h_tokens=None,
                            reasoning_tokens=None, usage_source="missing", cost=None)

# Responses (sec. 3.2): input 2231 includes cached 2048 -> 183; cache_write_tokens 0; output 142
# includes reasoning 128.  gpt-5: 183*1.25 + 2048*0.125 + 142*10 = 228.75 + 256 + 1420 = 1904.75
RESPONSES = dict(input_tokens=183, output_tokens=142, cache_read_tokens=2048, cache_write_tokens=0,
                 cache_write_5m_tokens=0, cache_write_1h_tokens=0, reasoning_tokens=128,
                 stop_reason="completed", tools=[], model="gpt-5-2025-08-07", price_entry="gpt-5",
                 usage_source="provider", cost=usd(1904.75), error=None)

# Responses incomplete (sec. 3.4): same input, output 16 (all reasoning), reason max_output_tokens.
#   228.75 + 256 + 16*10 = 644.75
RESPONSES_INCOMPLETE = dict(RESPONSES, output_tokens=16, reasoning_tokens=16, stop_reason="max_output_tokens",
                            cost=usd(644.75))

# Moonshot (sec. 4): usage sent twice (choices[0].usage and top level); counted once.
# prompt 1210 includes top-level cached_tokens 1024 -> 186; output 5.
# kimi-k2.6 (in 0.95, read 0.16, out 4): 186*0.95 + 1024*0.16 + 5*4 = 176.7 + 163.84 + 20 = 360.54
MOONSHOT = dict(input_tokens=186, output_tokens=5, cache_read_tokens=1024, cache_write_tokens=0,
                cache_write_5m_tokens=0, cache_write_1h_tokens=0, reasoning_tokens=None,
                stop_reason="stop", tools=[], model="kimi-k2.6", price_entry="kimi-k2.6",
                usage_source="provider", cost=usd(360.54), error=None)

# DeepSeek (sec. 4): usage on the finish chunk; prompt 1210 = hit 1152 + miss 58 -> input 58;
# output 9 includes reasoning 5.  deepseek-v4-pro at 12:00 UTC is off-peak (peak 01-04, 06-10):
#   58*0.66 + 1152*0.022 + 9*1.98 = 38.28 + 25.344 + 17.82 = 81.444
DEEPSEEK = dict(input_tokens=58, output_tokens=9, cache_read_tokens=1152, cache_write_tokens=0,
                cache_write_5m_tokens=0, cache_write_1h_tokens=0, reasoning_tokens=5,
                stop_reason="stop", tools=[], model="deepseek-v4-pro", price_entry="deepseek-v4-pro",
                usage_source="provider", cost=usd(81.444), error=None)

# (name, api, body, is_sse, model requested, expected)
CASES = (
    ("anthropic_nonstream", "messages", FIXTURES["anthropic_nonstream.json"], False, "claude-sonnet-4-6", ANTHROPIC),
    ("anthropic_stream", "messages", FIXTURES["anthropic_stream.sse"], True, "claude-sonnet-4-6", ANTHROPIC),
    ("anthropic_stream_error", "messages", FIXTURES["anthropic_stream_error.sse"], True, "claude-sonnet-4-6",
     ANTHROPIC_ERROR),
    ("openai_chat_nonstream", "chat", FIXTURES["openai_chat_nonstream.json"], False, "gpt-5", OPENAI_CHAT),
    ("openai_chat_stream", "chat", FIXTURES["openai_chat_stream.sse"], True, "gpt-5", OPENAI_CHAT),
    ("openai_chat_stream_no_usage", "chat", openai_chat_stream_body(False), True, "gpt-5", OPENAI_CHAT_NO_USAGE),
    ("responses_nonstream", "responses", FIXTURES["openai_responses_nonstream.json"], False, "gpt-5", RESPONSES),
    ("responses_stream", "responses", FIXTURES["openai_responses_stream.sse"], True, "gpt-5", RESPONSES),
    ("responses_incomplete_stream", "responses", responses_incomplete_stream_body(), True, "gpt-5",
     RESPONSES_INCOMPLETE),
    ("responses_incomplete_nonstream", "responses",
     json.dumps(json.loads(FIXTURES["openai_responses_incomplete_event.json"])["response"]).encode(), False,
     "gpt-5", RESPONSES_INCOMPLETE),
    ("moonshot_stream", "chat", FIXTURES["moonshot_chat_stream.sse"], True, "kimi-k2.6", MOONSHOT),
    ("deepseek_stream", "chat", FIXTURES["deepseek_chat_stream.sse"], True, "deepseek-v4-pro", DEEPSEEK),
)


class Checks(unittest.TestCase):
    def assertCost(self, actual, expected, msg=None):
        if expected is None:
            self.assertIsNone(actual, msg)
        else:
            self.assertIsNotNone(actual, msg)
            # build_row rounds to 8 decimals, i.e. to 1e-8 USD
            self.assertAlmostEqual(actual, expected, delta=1e-8, msg=msg)

    def assertRow(self, row, exp, name=""):
        for col in TOKEN_COLUMNS:
            self.assertEqual(row.get(col), exp[col], "%s: %s" % (name, col))
        self.assertEqual(row["stop_reason"], exp["stop_reason"], name)
        self.assertEqual(json.loads(row["tools_called"]) if row["tools_called"] else [], exp["tools"], name)
        self.assertEqual(row["model"], exp["model"], name)
        self.assertEqual(row["usage_source"], exp["usage_source"], name)
        self.assertEqual(row["price_entry"], exp["price_entry"], name)
        self.assertCost(row.get("estimated_cost_usd"), exp["cost"], name)
        if exp["error"] is None:
            self.assertIsNone(row["error"], name)
        else:
            self.assertIn(exp["error"], row["error"] or "", name)


# ---------------------------------------------------------------------------
# read_response + PARSERS[api].tokens on every fixture
# ---------------------------------------------------------------------------

class FixtureReadingTest(Checks):
    def test_every_fixture_reading(self):
        for name, api, body, is_sse, _, exp in CASES:
            with self.subTest(name):
                r = tokenspy.read_response(api, body, is_sse)
                if exp["usage_source"] == "missing":
                    self.assertIsNone(r.raw)
                else:
                    self.assertIsNotNone(r.raw)
                    tokens = tokenspy.PARSERS[api].tokens(r.raw)
                    for col in TOKEN_COLUMNS:
                        self.assertEqual(tokens[col], exp[col], col)
                    self.assertEqual(r.complete, exp["usage_source"] == "provider")
                self.assertEqual(r.model, exp["model"])
                self.assertEqual(r.stop_reason, exp["stop_reason"])
                self.assertEqual(r.tools, exp["tools"])
                if exp["error"]:
                    self.assertIn(exp["error"], r.error)
                else:
                    self.assertIsNone(r.error)

    def test_anthropic_stream_error_keeps_only_message_start_usage(self):
        r = tokenspy.read_response("messages", FIXTURES["anthropic_stream_error.sse"], True)
        self.assertEqual(r.raw, {"input_tokens": 25, "cache_creation_input_tokens": 0,
                                 "cache_read_input_tokens": 0, "output_tokens": 1})
        self.assertFalse(r.complete)
        self.assertIn("overloaded_error", r.error)
        self.assertIn("Overloaded", r.error)

    def test_http_error_bodies_have_no_usage(self):
        r = tokenspy.read_response("messages", FIXTURES["anthropic_529.json"], False)
        self.assertIsNone(r.raw)
        self.assertIn("overloaded_error", r.error)
        r = tokenspy.read_response("chat", FIXTURES["openai_429.json"], False)
        self.assertIsNone(r.raw)
        self.assertIn("Rate limit reached", r.error)

    def test_moonshot_usage_counted_once(self):
        r = tokenspy.read_response("chat", FIXTURES["moonshot_chat_stream.sse"], True)
        # the last (top-level) object, not a sum: 1210 + 1210 would be 2420
        self.assertEqual(r.raw, {"prompt_tokens": 1210, "completion_tokens": 5, "total_tokens": 1215,
                                 "cached_tokens": 1024})
        t = tokenspy.OpenAIChat.tokens(r.raw)
        self.assertEqual(t["input_tokens"] + t["cache_read_tokens"], 1210)

    def test_deepseek_usage_on_finish_chunk(self):
        # drop [DONE] and everything after the finish chunk: usage is already there
        events = sse_events(FIXTURES["deepseek_chat_stream.sse"])
        finish = [e for e in events if b'"finish_reason":"stop"' in e]
        r = tokenspy.read_response("chat", b"".join(events[:events.index(finish[0]) + 1]), True)
        self.assertEqual(tokenspy.OpenAIChat.tokens(r.raw)["input_tokens"], 58)   # 1210 - 1152

    def test_crlf_and_comment_lines(self):
        # SSE lines may end in \r\n (sec. 1.5); ':' lines are comments (OpenRouter keep-alives, sec. 4)
        for name, api, body, is_sse, _, exp in CASES:
            if not is_sse or exp["usage_source"] == "missing":
                continue
            with self.subTest(name):
                crlf = body.replace(b"\n", b"\r\n")
                commented = b": OPENROUTER PROCESSING\n\n" + body.replace(b"\n\n", b"\n\n: keep-alive\n\n")
                for variant in (crlf, commented):
                    r = tokenspy.read_response(api, variant, True)
                    self.assertEqual(tokenspy.PARSERS[api].tokens(r.raw)["input_tokens"], exp["input_tokens"])
                    self.assertEqual(r.stop_reason, exp["stop_reason"])

    def test_unicode_line_separator_inside_json_does_not_split_the_event(self):
        # WHATWG SSE (sec. 1.5): lines end only at \n, \r\n or \r. JSON may carry U+2028,
        # U+2029 and U+0085 unescaped, and the Responses terminal event repeats the output
        # text next to the usage. The usage must survive: 183 / 142 as in the plain fixture.
        for sep in ("\u2028", "\u2029", "\u0085"):
            with self.subTest(repr(sep)):
                body = FIXTURES["openai_responses_stream.sse"].replace(
                    b'"text":"Paris."}]}]', ('"text":"Paris.%sNext line."}]}]' % sep).encode("utf-8"))
                self.assertNotEqual(body, FIXTURES["openai_responses_stream.sse"])
                r = tokenspy.read_response("responses", body, True)
                self.assertIsNotNone(r.raw, "usage lost: the data line was split at %r" % sep)
                t = tokenspy.OpenAIResponses.tokens(r.raw)
                self.assertEqual((t["input_tokens"], t["output_tokens"]), (183, 142))


# ---------------------------------------------------------------------------
# The whole row path: Flow (chunks as relayed) -> build_row
# ---------------------------------------------------------------------------

class FlowRowTest(Checks):
    def test_every_fixture_row(self):
        for name, api, body, is_sse, model, exp in CASES:
            with self.subTest(name):
                row = row_for(api, body, SSE if is_sse else JSON, request=request_body(api, model, is_sse))
                self.assertRow(row, exp, name)
                self.assertEqual(row["stream"], 1 if is_sse else 0)
                self.assertEqual(row["requested_model"], model)
                self.assertEqual(row["client_session_id"], "sess-123")
                self.assertEqual(row["request_id"], "req_abc")
                self.assertEqual(row["response_body_bytes"], len(body))
                self.assertEqual(row["timestamp"], "2026-12-03T12:00:00.000Z")
                self.assertEqual(row["price_version"], PRICES.version)
                self.assertTrue(set(row) <= set(tokenspy_db.USAGE_COLUMNS), set(row) - set(tokenspy_db.USAGE_COLUMNS))

    def test_split_at_every_byte_offset(self):
        for name, api, body, is_sse, model, exp in CASES:
            if not is_sse:
                continue
            with self.subTest(name):
                req = request_body(api, model, True)
                whole = comparable(tokenspy.build_row(make_flow(api, [body], request=req), PRICES, {}))
                self.assertRow(whole, exp, name)
                bad = []
                for cut in range(1, len(body)):
                    flow = make_flow(api, [body[:cut], body[cut:]], request=req)
                    if comparable(tokenspy.build_row(flow, PRICES, {})) != whole:
                        bad.append(cut)
                self.assertEqual(bad[:10], [], "%s: %d offsets differ" % (name, len(bad)))

    def test_random_1_to_40_byte_pieces(self):
        for name, api, body, is_sse, model, exp in CASES:
            with self.subTest(name):
                req = request_body(api, model, is_sse)
                ctype = SSE if is_sse else JSON
                whole = comparable(tokenspy.build_row(make_flow(api, [body], ctype, request=req), PRICES, {}))
                for seed in range(8):
                    pieces = random_pieces(body, seed)
                    self.assertEqual(b"".join(pieces), body)
                    row = tokenspy.build_row(make_flow(api, pieces, ctype, request=req), PRICES, {})
                    self.assertEqual(comparable(row), whole, "seed %d" % seed)
                    self.assertRow(row, exp, name)

    def test_split_inside_utf8_sequence(self):
        # text deltas with multi-byte characters; a cut in the middle of one must not matter
        text = "Grüße ✓ 😀"
        body = FIXTURES["anthropic_stream.sse"].replace(b'"text":"Let me check"', json.dumps(
            {"text": text}, ensure_ascii=False)[1:-1].encode("utf-8"))
        self.assertIn(text.encode("utf-8"), body)
        start = body.index("😀".encode("utf-8"))
        base = comparable(row_for("messages", body))
        self.assertRow(base, ANTHROPIC)
        for cut in range(start - 8, start + 5):
            row = tokenspy.build_row(make_flow("messages", [body[:cut], body[cut:]]), PRICES, {})
            self.assertEqual(comparable(row), base)


# ---------------------------------------------------------------------------
# Anthropic message_delta: overwrite, never add (sec. 1.5)
# ---------------------------------------------------------------------------

def anthropic_stream(start_usage, *delta_usages, **kw):
    message = {"id": "msg_x", "type": "message", "role": "assistant", "model": kw.get("model", "claude-sonnet-4-6"),
               "content": [], "stop_reason": None, "stop_sequence": None}
    if start_usage is not None:
        message["usage"] = start_usage
    events = [("message_start", {"type": "message_start", "message": message}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Hi"}}),
              ("content_block_stop", {"type": "content_block_stop", "index": 0})]
    for usage in delta_usages:
        events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                            "stop_sequence": None},
                                         "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return sse(*events)


START = {"input_tokens": 100, "cache_creation_input_tokens": 200, "cache_read_input_tokens": 300,
         "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 0}, "output_tokens": 1}


class AnthropicDeltaTest(Checks):
    def tokens(self, body):
        r = tokenspy.read_response("messages", body, True)
        return tokenspy.AnthropicMessages.tokens(r.raw)

    def test_repeated_cumulative_fields_are_not_added(self):
        t = self.tokens(anthropic_stream(START, {"input_tokens": 100, "cache_creation_input_tokens": 200,
                                                 "cache_read_input_tokens": 300, "output_tokens": 50}))
        # 100 / 200 / 300, not 200 / 400 / 600; output 50 replaces the placeholder 1
        self.assertEqual((t["input_tokens"], t["cache_write_tokens"], t["cache_read_tokens"], t["output_tokens"]),
                         (100, 200, 300, 50))
        self.assertEqual((t["cache_write_5m_tokens"], t["cache_write_1h_tokens"]), (200, 0))
        # sonnet-4-6: 100*3 + 200*3.75 + 300*0.3 + 50*15 = 300 + 750 + 90 + 750 = 1890
        row = row_for("messages", anthropic_stream(START, {"input_tokens": 100, "cache_creation_input_tokens": 200,
                                                           "cache_read_input_tokens": 300, "output_tokens": 50}))
        self.assertCost(row["estimated_cost_usd"], usd(1890))
        self.assertEqual(row["usage_source"], "provider")

    def test_output_only_delta_keeps_message_start_input(self):
        t = self.tokens(anthropic_stream(START, {"output_tokens": 50}))
        self.assertEqual((t["input_tokens"], t["cache_write_tokens"], t["cache_read_tokens"], t["output_tokens"]),
                         (100, 200, 300, 50))
        self.assertEqual(t["cache_write_5m_tokens"], 200)      # the split survives: only message_start has it

    def test_last_delta_wins(self):
        t = self.tokens(anthropic_stream(START, {"output_tokens": 20}, {"output_tokens": 50}))
        self.assertEqual(t["output_tokens"], 50)               # cumulative: 50, not 70

    def test_null_field_in_delta_does_not_erase(self):
        t = self.tokens(anthropic_stream(START, {"input_tokens": None, "output_tokens": 50}))
        self.assertEqual(t["input_tokens"], 100)

    def test_llama_cpp_stream_input_unknown(self):
        body = anthropic_stream(None, {"output_tokens": 7})
        t = self.tokens(body)
        self.assertIsNone(t["input_tokens"])                   # unknown, not 0
        self.assertIsNone(t["cache_read_tokens"])
        self.assertIsNone(t["cache_write_tokens"])
        self.assertEqual(t["output_tokens"], 7)
        row = row_for("messages", body, local={"agents": (), "upstream": True})
        self.assertIsNone(row["input_tokens"])
        self.assertEqual(row["output_tokens"], 7)
        self.assertEqual(row["price_entry"], "local")
        self.assertEqual(row["estimated_cost_usd"], 0.0)

    def test_stream_cut_before_message_delta_is_partial(self):
        body = anthropic_stream(START, {"output_tokens": 50})
        cut = body[:body.index(b"event: message_delta")]
        row = row_for("messages", cut, error="client disconnected before the response ended")
        self.assertEqual(row["usage_source"], "partial")
        self.assertEqual(row["input_tokens"], 100)
        self.assertEqual(row["output_tokens"], 1)              # only the placeholder is known


# ---------------------------------------------------------------------------
# OpenAI: nulls, cache writes, TTL split
# ---------------------------------------------------------------------------

def chat_body(usage, model="gpt-5"):
    return json.dumps({"id": "c", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "finish_reason": "stop"}], "usage": usage}).encode()


def responses_body(usage, model="gpt-5.6"):
    return json.dumps({"id": "r", "object": "response", "status": "completed", "model": model,
                       "output": [], "usage": usage}).encode()


class OpenAIUsageTest(Checks):
    def test_explicit_null_usage(self):
        for api, body in (("chat", chat_body(None)), ("responses", responses_body(None, "gpt-5")),
                          ("chat", data_sse({"model": "gpt-5", "choices": [{"index": 0, "delta": {"content": "x"},
                                                                            "finish_reason": "stop"}],
                                             "usage": None},
                                            {"model": "gpt-5", "choices": [], "usage": None}))):
            with self.subTest(api=api, sse=body.startswith(b"data:")):
                ctype = SSE if body.startswith(b"data:") else JSON
                row = row_for(api, body, ctype)
                self.assertEqual(row["usage_source"], "missing")
                for col in TOKEN_COLUMNS:
                    self.assertIsNone(row.get(col), col)
                self.assertIsNone(row.get("estimated_cost_usd"))
                self.assertEqual(row["price_entry"], "gpt-5")

    def test_null_details_are_treated_as_absent(self):
        base = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}
        nulls = dict(base, prompt_tokens_details=None, completion_tokens_details=None)
        self.assertEqual(tokenspy.OpenAIChat.tokens(nulls), tokenspy.OpenAIChat.tokens(base))
        t = tokenspy.OpenAIChat.tokens(nulls)
        self.assertEqual((t["input_tokens"], t["output_tokens"], t["reasoning_tokens"]), (100, 10, None))
        r = {"input_tokens": 100, "input_tokens_details": None, "output_tokens": 10, "output_tokens_details": None}
        t = tokenspy.OpenAIResponses.tokens(r)
        self.assertEqual((t["input_tokens"], t["output_tokens"], t["reasoning_tokens"]), (100, 10, None))
        details_null_cached = dict(base, prompt_tokens_details={"cached_tokens": None})
        self.assertEqual(tokenspy.OpenAIChat.tokens(details_null_cached)["input_tokens"], 100)

    def test_null_prompt_tokens_stays_unknown(self):
        t = tokenspy.OpenAIChat.tokens({"prompt_tokens": None, "completion_tokens": 10})
        self.assertIsNone(t["input_tokens"])
        self.assertIsNone(t["cache_read_tokens"])
        self.assertIsNone(t["cache_write_tokens"])
        self.assertEqual(t["output_tokens"], 10)

    def test_chat_cache_write_tokens_gpt_5_6(self):
        usage = {"prompt_tokens": 10000, "completion_tokens": 100, "total_tokens": 10100,
                 "prompt_tokens_details": {"cached_tokens": 4000, "cache_write_tokens": 3000}}
        row = row_for("chat", chat_body(usage, "gpt-5.6"), JSON)
        # uncached = 10000 - 4000 read - 3000 written = 3000; no TTL split -> all 30m (short)
        self.assertEqual((row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]), (3000, 4000, 3000))
        self.assertEqual((row["cache_write_5m_tokens"], row["cache_write_1h_tokens"]), (3000, 0))
        # gpt-5.6: in 4, read 0.4, 30m write 5, out 20:
        #   3000*4 + 4000*0.4 + 3000*5 + 100*20 = 12000 + 1600 + 15000 + 2000 = 30600
        self.assertCost(row["estimated_cost_usd"], usd(30600))

    def test_responses_ttl_12h_split(self):
        details = {"cached_tokens": 4000, "cache_write_tokens": 3000,
                   "cache_write_tokens_details": {"ttl_30m_tokens": 1000, "ttl_12h_tokens": 2000}}
        only_12h = {"cached_tokens": 4000, "cache_write_tokens": 3000,
                    "cache_write_tokens_details": {"ttl_12h_tokens": 2000}}
        for d in (details, only_12h):
            with self.subTest(d=d):
                usage = {"input_tokens": 10000, "input_tokens_details": d, "output_tokens": 100,
                         "output_tokens_details": {"reasoning_tokens": 40}, "total_tokens": 10100}
                row = row_for("responses", responses_body(usage), JSON)
                self.assertEqual((row["input_tokens"], row["cache_write_tokens"]), (3000, 3000))
                self.assertEqual((row["cache_write_5m_tokens"], row["cache_write_1h_tokens"]), (1000, 2000))
                self.assertEqual(row["reasoning_tokens"], 40)
                # gpt-5.6: 3000*4 + 4000*0.4 + 1000*5 (30m) + 2000*10 (12h) + 100*20
                #        = 12000 + 1600 + 5000 + 20000 + 2000 = 40600
                self.assertCost(row["estimated_cost_usd"], usd(40600))

    def test_responses_failed_with_usage_is_billed(self):
        event = {"type": "response.failed", "response": {
            "id": "r", "object": "response", "status": "failed", "model": "gpt-5",
            "error": {"code": "server_error", "message": "boom"},
            "usage": {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0}}}}
        row = row_for("responses", sse(("response.failed", event)))
        self.assertIn("server_error", row["error"])
        # gpt-5: 1000*1.25 + 10*10 = 1350
        self.assertCost(row["estimated_cost_usd"], usd(1350))


# ---------------------------------------------------------------------------
# Content-Encoding and "null never becomes 0"
# ---------------------------------------------------------------------------

def raw_deflate(data):
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


class EncodingTest(Checks):
    def test_gzip_and_deflate_bodies_decode(self):
        for name, api, body, is_sse, model, exp in CASES:
            if name not in ("anthropic_nonstream", "anthropic_stream", "openai_chat_stream", "responses_nonstream"):
                continue
            for enc, encoded in (("gzip", gzip.compress(body)), ("x-gzip", gzip.compress(body)),
                                 ("deflate", zlib.compress(body)), ("deflate", raw_deflate(body))):
                with self.subTest(name=name, enc=enc):
                    pieces = random_pieces(encoded, 3, 7)
                    flow = make_flow(api, pieces, SSE if is_sse else JSON, encoding=enc,
                                     request=request_body(api, model, is_sse))
                    row = tokenspy.build_row(flow, PRICES, {})
                    self.assertRow(row, exp, name)
                    self.assertEqual(row["response_body_bytes"], len(encoded))

    def test_brotli_body_is_missing_with_a_note(self):
        flow = make_flow("messages", [b"\x1b\x2f\x00\xf8\x01\x02\x03junk"], JSON, encoding="br",
                         request=request_body("messages", "claude-sonnet-4-6", False))
        row = tokenspy.build_row(flow, PRICES, {})
        self.assertEqual(row["usage_source"], "missing")
        self.assertIn("br", row["error"])
        self.assertIn("not readable", row["error"])
        for col in TOKEN_COLUMNS:
            self.assertIsNone(row.get(col), col)
        self.assertEqual(row["price_entry"], "claude-sonnet-4-6")   # priced model, unknown usage
        self.assertIsNone(row.get("estimated_cost_usd"))

    def test_missing_usage_stays_null_in_the_database(self):
        folder = tempfile.mkdtemp()
        try:
            store = tokenspy_db.Store(os.path.join(folder, "usage.db"))
            try:
                missing = row_for("chat", openai_chat_stream_body(False),
                                  request=request_body("chat", "gpt-5", True))
                known = row_for("chat", FIXTURES["openai_chat_stream.sse"], request=request_body("chat", "gpt-5", True))
                store.insert_turns([missing, known])
                got = store.query("SELECT * FROM usage ORDER BY id")
            finally:
                store.close()
        finally:
            shutil.rmtree(folder)
        self.assertEqual(got[0]["usage_source"], "missing")
        for col in TOKEN_COLUMNS + ("estimated_cost_usd",):
            self.assertIsNone(got[0][col], col)
        self.assertEqual((got[1]["input_tokens"], got[1]["cache_read_tokens"]), (307, 1536))
        self.assertAlmostEqual(got[1]["estimated_cost_usd"], usd(2695.75), delta=1e-8)


# ---------------------------------------------------------------------------
# Prices
# ---------------------------------------------------------------------------

class PriceLookupTest(Checks):
    def key(self, model):
        return PRICES.lookup(model)[0]

    def test_exact(self):
        for m in ("claude-sonnet-4-6", "gpt-5", "gpt-4o-2024-05-13", "claude-sonnet-4-5-20250929", "kimi-k2.6"):
            self.assertEqual(self.key(m), m)

    def test_date_suffix_stripped(self):
        self.assertEqual(self.key("claude-haiku-4-5-20251001"), "claude-haiku-4-5")
        self.assertEqual(self.key("gpt-5-2025-08-07"), "gpt-5")
        self.assertEqual(self.key("gpt-4o-2024-11-20"), "gpt-4o")
        # an exact dated entry wins over the stripped name: gpt-4o-2024-05-13 is 5/15, gpt-4o 2.5/10
        self.assertEqual(PRICES.lookup("gpt-4o-2024-05-13")[1]["input"], 5)

    def test_provider_prefix_stripped(self):
        # documented: "without a provider prefix such as 'openai/'"; with several slashes
        # everything up to the last one is the prefix
        self.assertEqual(self.key("anthropic/claude-sonnet-4-6"), "claude-sonnet-4-6")
        self.assertEqual(self.key("openai/gpt-5"), "gpt-5")
        self.assertEqual(self.key("openrouter/openai/gpt-5"), "gpt-5")
        self.assertEqual(self.key("deepseek/deepseek-v4-pro"), "deepseek-v4-pro")
        self.assertEqual(self.key("anthropic/claude-haiku-4-5-20251001"), "claude-haiku-4-5")   # both

    def test_no_substring_matching(self):
        for m in ("gpt-4.1-foo", "my-gpt-5", "gpt-5-turbo-x", "gpt-5x", "claude-sonnet-4-6-extended",
                  "xclaude-sonnet-4-6", "gpt-5-2025-08-07-preview", "openai/", "", None, 42):
            with self.subTest(m=m):
                self.assertEqual(PRICES.lookup(m), (None, None))

    def test_unknown_model_row(self):
        body = FIXTURES["openai_chat_nonstream.json"].replace(b'"model":"gpt-5-2025-08-07"', b'"model":"mystery-9000"')
        row = row_for("chat", body, JSON, request=request_body("chat", "mystery-9000", False))
        self.assertEqual(row["input_tokens"], 307)            # usage still read
        self.assertIsNone(row["price_entry"])
        self.assertIsNone(row.get("estimated_cost_usd"))


def anthropic_usage(inp, out, read=0, w5=0, w1=0, split=True):
    usage = {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": read,
             "cache_creation_input_tokens": w5 + w1}
    if split:
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1}
    return tokenspy.AnthropicMessages.tokens(usage)


def chat_usage(prompt, cached, completion, write=None):
    details = {"cached_tokens": cached}
    if write is not None:
        details["cache_write_tokens"] = write
    return tokenspy.OpenAIChat.tokens({"prompt_tokens": prompt, "completion_tokens": completion,
                                       "prompt_tokens_details": details})


class PriceCostTest(Checks):
    def cost(self, model, tokens, when=NOON):
        key, entry = PRICES.lookup(model)
        self.assertIsNotNone(entry, model)
        return PRICES.cost(entry, tokens, when)

    def test_anthropic_5m_vs_1h_writes(self):
        # claude-opus-5-5: in 4, 5m write 5, 1h write 8, out 20
        # 1000*4 + 1000*5 + 2000*8 + 100*20 = 4000 + 5000 + 16000 + 2000 = 27000
        self.assertCost(self.cost("claude-opus-5-5", anthropic_usage(1000, 100, w5=1000, w1=2000)), usd(27000))
        # no cache_creation split: all 3000 writes are 5m (sec. 1.3): 4000 + 3000*5 + 2000 = 21000
        self.assertCost(self.cost("claude-opus-5-5", anthropic_usage(1000, 100, w5=3000, split=False)), usd(21000))

    def test_haiku_5_5_tier_reprices_every_token(self):
        # prompt side exactly 100,000 (20000 + 80000 read): base rates in 0.1, read 0.01, out 0.5
        #   20000*0.1 + 80000*0.01 + 1000*0.5 = 2000 + 800 + 500 = 3300
        self.assertCost(self.cost("claude-haiku-5-5", anthropic_usage(20000, 1000, read=80000)), usd(3300))
        # 100,001 > 100K: every token at in 0.5, read 0.05, out 2.5
        #   20000*0.5 + 80001*0.05 + 1000*2.5 = 10000 + 4000.05 + 2500 = 16500.05
        self.assertCost(self.cost("claude-haiku-5-5", anthropic_usage(20000, 1000, read=80001)), usd(16500.05))
        # writes count toward the threshold and use the tier's 1h rate (1.00):
        #   1000 + 100000 = 101000 > 100K: 1000*0.5 + 100000*1 + 10*2.5 = 500 + 100000 + 25 = 100525
        self.assertCost(self.cost("claude-haiku-5-5", anthropic_usage(1000, 10, w1=100000)), usd(100525))

    def test_openai_272k_tier(self):
        # gpt-5.6 at prompt 272,000 (not above): 200000*4 + 72000*0.4 + 1000*20 = 800000 + 28800 + 20000
        self.assertCost(self.cost("gpt-5.6", chat_usage(272000, 72000, 1000)), usd(848800))
        # 272,001: input and cache 2x, output 1.5x: 200001*8 + 72000*0.8 + 1000*30 = 1600008 + 57600 + 30000
        self.assertCost(self.cost("gpt-5.6", chat_usage(272001, 72000, 1000)), usd(1687608))
        # gpt-5 has no tier: 300000*1.25 + 1000*10 = 375000 + 10000
        self.assertCost(self.cost("gpt-5", chat_usage(300000, 0, 1000)), usd(385000))

    def test_deepseek_peak_and_off_peak_by_timestamp(self):
        # 58 in, 1152 read, 9 out (the fixture). Peak (01-04, 06-10 UTC): 1.32 / 0.044 / 3.96
        #   58*1.32 + 1152*0.044 + 9*3.96 = 76.56 + 50.688 + 35.64 = 162.888
        # off-peak: 81.444 (see DEEPSEEK)
        peak, off = usd(162.888), usd(81.444)
        hours = ((0, 59, off), (1, 0, peak), (2, 30, peak), (3, 59, peak), (4, 0, off), (5, 30, off),
                 (6, 0, peak), (9, 59, peak), (10, 0, off), (23, 0, off))
        for h, m, expected in hours:
            with self.subTest("%02d:%02d" % (h, m)):
                row = row_for("chat", FIXTURES["deepseek_chat_stream.sse"], started=THURSDAY + h * 3600 + m * 60)
                self.assertCost(row["estimated_cost_usd"], expected)

    def test_local_agents_and_local_upstream(self):
        body = FIXTURES["anthropic_stream.sse"]
        for local in ({"agents": {"tester"}, "upstream": False}, {"agents": set(), "upstream": True}):
            with self.subTest(local=local):
                row = row_for("messages", body, local=local)
                self.assertEqual((row["price_entry"], row["estimated_cost_usd"]), ("local", 0.0))
                self.assertEqual(row["input_tokens"], 472)
                missing = row_for("chat", openai_chat_stream_body(False), local=local)
                self.assertEqual(missing["price_entry"], "local")
                self.assertIsNone(missing["estimated_cost_usd"])     # unknown usage is not $0
        other = row_for("messages", body, local={"agents": {"someone-else"}, "upstream": False})
        self.assertEqual(other["price_entry"], "claude-sonnet-4-6")
        self.assertCost(other["estimated_cost_usd"], usd(18111))


class PriceOverrideTest(Checks):
    def setUp(self):
        self.folder = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.folder)

    def write(self, name, content):
        path = os.path.join(self.folder, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(content if isinstance(content, str) else json.dumps(content))
        return path

    def test_tokenspy_format(self):
        path = self.write("mine.json", {"version": "x", "models": {
            "acme-1": {"input": 1, "output": 2, "cache_read": 0.1},
            "gpt-5": {"input": 100, "output": 200}}})
        prices = tokenspy.Prices(override=path)
        self.assertEqual(prices.version, PRICES.version + "+mine.json")
        key, entry = prices.lookup("acme-1-20260101")
        self.assertEqual(key, "acme-1")
        # 1000*1 + 500*0.1 + 100*2 = 1000 + 50 + 200 = 1250
        self.assertCost(prices.cost(entry, chat_usage(1500, 500, 100), NOON), usd(1250))
        # overrides a built-in: 1000*100 + 10*200 = 102000
        self.assertCost(prices.cost(prices.lookup("gpt-5")[1], chat_usage(1000, 0, 10), NOON), usd(102000))
        self.assertEqual(prices.lookup("claude-sonnet-4-6")[0], "claude-sonnet-4-6")   # built-ins kept

    def test_litellm_format(self):
        path = self.write("model_prices_and_context_window.json", {
            "sample_spec": {"input_cost_per_token": 0, "output_cost_per_token": 0, "litellm_provider": "x"},
            "acme-claude": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                            "cache_read_input_token_cost": 3e-07, "cache_creation_input_token_cost": 3.75e-06,
                            "cache_creation_input_token_cost_above_1hr": 6e-06,
                            "input_cost_per_token_above_200k_tokens": 6e-06,
                            "output_cost_per_token_above_200k_tokens": 2.25e-05,
                            "litellm_provider": "anthropic", "mode": "chat"},
            "acme-gpt": {"input_cost_per_token": 4e-06, "output_cost_per_token": 2e-05,
                         "cache_read_input_token_cost": 4e-07, "cache_creation_input_token_cost": 5e-06,
                         "cache_creation_input_token_cost_above_12hr": 1e-05, "litellm_provider": "openai"}})
        prices = tokenspy.Prices(override=path)
        self.assertEqual(prices.lookup("sample_spec"), (None, None))
        entry = prices.lookup("acme-claude")[1]
        # per token x 1e6: in 3, out 15, read 0.3, 5m write 3.75, 1h write 6
        # 1000*3 + 500*3.75 + 2000*6 + 4000*0.3 + 100*15 = 3000 + 1875 + 12000 + 1200 + 1500 = 19575
        tokens = anthropic_usage(1000, 100, read=4000, w5=500, w1=2000)
        self.assertCost(prices.cost(entry, tokens, NOON), usd(19575))
        # above 200K input side (250000 uncached): in 6, out 22.5: 250000*6 + 1000*22.5 = 1500000 + 22500
        self.assertCost(prices.cost(entry, anthropic_usage(250000, 1000), NOON), usd(1522500))
        # exactly 200K stays at base: 200000*3 + 1000*15 = 615000
        self.assertCost(prices.cost(entry, anthropic_usage(200000, 1000), NOON), usd(615000))
        # 12h write (LiteLLM _above_12hr) -> long rate 10: 1000*5 (30m) + 2000*10 (12h) + 100*20 = 27000
        gpt = prices.lookup("acme-gpt")[1]
        t = tokenspy.OpenAIResponses.tokens({"input_tokens": 3000, "output_tokens": 100, "input_tokens_details": {
            "cached_tokens": 0, "cache_write_tokens": 3000,
            "cache_write_tokens_details": {"ttl_30m_tokens": 1000, "ttl_12h_tokens": 2000}}})
        self.assertCost(prices.cost(gpt, t, NOON), usd(27000))

    def test_malformed_override_raises(self):
        cases = {
            "notjson.json": "{nope",
            "list.json": "[1, 2]",
            "string_rate.json": {"models": {"x": {"input": "1", "output": 2}}},
            "no_output.json": {"models": {"x": {"input": 1}}},
            "entry_not_object.json": {"models": {"x": "cheap"}},
        }
        for name, content in cases.items():
            with self.subTest(name):
                with self.assertRaises(tokenspy.ConfigError):
                    tokenspy.Prices(override=self.write(name, content))
        with self.assertRaises(tokenspy.ConfigError):
            tokenspy.Prices(override=os.path.join(self.folder, "does-not-exist.json"))

    def test_override_with_no_usable_entry_raises(self):
        # Files that set no price at all must not be accepted silently: the operator would
        # believe the prices were overridden. "models" as a list, and Token Spy entries
        # without the "models" wrapper (read as LiteLLM, where none has *_cost_per_token).
        cases = {"models_list.json": {"models": [{"name": "gpt-5", "input": 1, "output": 2}]},
                 "unwrapped.json": {"gpt-5": {"input": 1, "output": 2}}}
        for name, content in cases.items():
            with self.subTest(name):
                with self.assertRaises(tokenspy.ConfigError):
                    tokenspy.Prices(override=self.write(name, content))


# ---------------------------------------------------------------------------
# analyze_request
# ---------------------------------------------------------------------------

class AnalyzeRequestTest(unittest.TestCase):
    def test_anthropic_counts_and_history(self):
        req = {"model": "claude-sonnet-4-6", "stream": True, "max_tokens": 100,
               "system": [{"type": "text", "text": "You are X."},
                          {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
               "messages": [{"role": "user", "content": "héllo ✓"},
                            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                            {"role": "user", "content": "😀"}],
               "tools": [{"name": "t", "input_schema": {}}]}
        body = json.dumps(req).encode()
        out = tokenspy.analyze_request("messages", body)
        self.assertEqual(out["request_body_bytes"], len(body))
        self.assertEqual(out["requested_model"], "claude-sonnet-4-6")
        self.assertEqual(out["stream"], 1)
        self.assertEqual((out["message_count"], out["user_message_count"], out["assistant_message_count"]), (3, 2, 1))
        compact = ('[{"role":"user","content":"héllo ✓"},'
                   '{"role":"assistant","content":[{"type":"text","text":"ok"}]},'
                   '{"role":"user","content":"😀"}]')
        self.assertEqual(out["conversation_history_chars"], len(compact))
        # one per character: with \u escapes é and ✓ would be 6 each (+5 +5) and 😀 12 (+11)
        self.assertEqual(len(json.dumps(req["messages"], separators=(",", ":"))), len(compact) + 21)
        # "You are X." (10) + "\n" + "Be brief." (9) = 20
        self.assertEqual(out["system_prompt_total_chars"], 20)
        self.assertEqual(out["base_prompt_chars"], 20)
        self.assertEqual(out["tool_count"], 1)
        self.assertEqual(out["tool_defs_chars"], len('[{"name":"t","input_schema":{}}]'))

    def test_chat_system_and_developer_excluded_from_history(self):
        req = {"model": "gpt-5", "messages": [
            {"role": "system", "content": "SYS prompt"},
            {"role": "developer", "content": [{"type": "text", "text": "DEV"}]},
            {"role": "user", "content": "Ça va?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                   "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "user", "content": "thanks"}],
            "functions": [{"name": "legacy"}]}
        out = tokenspy.analyze_request("chat", json.dumps(req).encode())
        self.assertEqual((out["message_count"], out["user_message_count"], out["assistant_message_count"]), (6, 2, 1))
        compact = ('[{"role":"user","content":"Ça va?"},'
                   '{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",'
                   '"function":{"name":"f","arguments":"{}"}}]},'
                   '{"role":"tool","tool_call_id":"c1","content":"42"},'
                   '{"role":"user","content":"thanks"}]')
        self.assertEqual(out["conversation_history_chars"], len(compact))
        # "SYS prompt" (10) + "\n" + "DEV" (3) = 14
        self.assertEqual(out["system_prompt_total_chars"], 14)
        self.assertEqual(out["tool_count"], 1)
        self.assertEqual(out["stream"], 0)

    def test_responses_input_string(self):
        req = {"model": "gpt-5", "instructions": "Be terse.", "input": "Bonjour ✓"}
        out = tokenspy.analyze_request("responses", json.dumps(req).encode())
        self.assertEqual((out["message_count"], out["user_message_count"], out["assistant_message_count"]), (1, 1, 0))
        self.assertEqual(out["conversation_history_chars"], len('[{"role":"user","content":"Bonjour ✓"}]'))
        self.assertEqual(out["system_prompt_total_chars"], 9)           # "Be terse."

    def test_responses_input_list(self):
        req = {"model": "gpt-5", "instructions": "Be terse.", "input": [
            {"role": "developer", "content": "D"},
            {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
            {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c1"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"}]}
        out = tokenspy.analyze_request("responses", json.dumps(req).encode())
        self.assertEqual((out["message_count"], out["user_message_count"], out["assistant_message_count"]), (4, 1, 0))
        compact = ('[{"role":"user","content":[{"type":"input_text","text":"q"}]},'
                   '{"type":"function_call","name":"f","arguments":"{}","call_id":"c1"},'
                   '{"type":"function_call_output","call_id":"c1","output":"42"}]')
        self.assertEqual(out["conversation_history_chars"], len(compact))
        self.assertEqual(out["system_prompt_total_chars"], 11)          # "Be terse." (9) + "\n" + "D" (1)

    def test_odd_bodies_do_not_crash(self):
        for api in ("messages", "chat", "responses", "completions", "embeddings"):
            for body in (b"", b"not json", b"\xff\xfe\x00garbage", b"[1, 2]", b"null", b"42",
                         b'{"model": null, "messages": null, "input": null, "system": null, "tools": null}',
                         b'{"model": 7, "messages": ["hi", null, 3, {"role": "user"}], "input": [1, "x"],'
                         b' "system": 5, "instructions": 5, "tools": {"a": 1}, "functions": "x"}'):
                with self.subTest(api=api, body=body):
                    out = tokenspy.analyze_request(api, body)
                    self.assertEqual(out["request_body_bytes"], len(body))
                    self.assertIsNone(out.get("requested_model"))
        self.assertEqual(tokenspy.analyze_request("chat", b"[1, 2]"), {"request_body_bytes": 6})
        # and through the row path: the response still gives model and usage
        row = row_for("messages", FIXTURES["anthropic_stream.sse"], request=b"not json")
        self.assertEqual((row["model"], row["input_tokens"]), ("claude-sonnet-4-6", 472))


# ---------------------------------------------------------------------------
# system_breakdown (OpenClaw system prompts)
# ---------------------------------------------------------------------------

COLUMNS = tokenspy.SYSTEM_COLUMNS


def build(parts):
    """parts: (column or None for base, text) -> (prompt, expected column counts)."""
    expected = dict.fromkeys(COLUMNS, 0)
    for column, text in parts:
        expected[column or "base_prompt_chars"] += len(text)
    return "".join(t for _, t in parts), expected


class SystemBreakdownTest(unittest.TestCase):
    def check(self, parts):
        prompt, expected = build(parts)
        out = tokenspy.analyze_request("messages", json.dumps({"model": "m", "system": prompt, "messages": []}).encode())
        self.assertEqual(out["system_prompt_total_chars"], len(prompt))
        self.assertEqual({c: out[c] for c in COLUMNS}, expected)
        self.assertEqual(sum(out[c] for c in COLUMNS), len(prompt))
        return out

    def test_openclaw_prompt(self):
        # A file runs from the line after its "## NAME.md" heading (heading line is base) to the
        # next marker; skills include their heading; "## Runtime" ends the skills.
        out = self.check([
            (None, "You are a personal assistant running inside OpenClaw.\n## Tooling\n- read: Read files\n"),
            (None, "# Project Context\nThe following project context files have been loaded:\n"
                   "If SOUL.md is present, embody its persona and tone.\n"),
            (None, "## AGENTS.md\n"),
            ("workspace_agents_chars", "Treat this folder as home.\n## Every Session\nRead SOUL.md first.\n\n"),
            (None, "## SOUL.md\n"),
            ("workspace_soul_chars", "Be warm, be brief. Grüße ✓ 😀\n\n"),
            (None, "## /home/me/.openclaw/workspace/MEMORY.md\n"),
            ("workspace_memory_chars", "- 2026-12-01: user prefers tea\n- ships on Fridays\n\n"),
            (None, "## NOTES.md\n"),
            ("workspace_other_chars", "scratch notes\n\n"),
            ("skill_injection_chars", "## Skills (mandatory)\nBefore replying: scan <available_skills> entries.\n"
                                      "<available_skills>\n  <skill><name>weather</name></skill>\n"
                                      "</available_skills>\n\n"),
            (None, "## Runtime\nRuntime: agent=main | model=anthropic/claude-sonnet-4-6 | thinking=low"),
        ])
        # sanity on the hand counts: "scratch notes\n\n" is 15 characters, the SOUL part 30
        self.assertEqual(out["workspace_other_chars"], 15)
        self.assertEqual(out["workspace_soul_chars"], 30)

    def test_skills_before_project_context_and_other_end_markers(self):
        self.check([
            (None, "You are a personal assistant running inside OpenClaw.\n"),
            ("skill_injection_chars", "## Skills (mandatory)\nscan <available_skills>\n<available_skills/>\n"),
            (None, "## Memory Recall\nrun memory_search first\n## Workspace\nYour working directory is /w\n"
                   "## SKILL.md is not a workspace file before Project Context\n"),
            (None, "# Project Context\nloaded:\n"),
            (None, "## USER.md\n"),
            ("workspace_user_chars", "Name: Alice\n\n"),
            (None, "## HEARTBEAT.md\n"),
            ("workspace_heartbeat_chars", "- check inbox\n\n"),
            (None, "## Silent Replies\nWhen you have nothing to say, respond with ONLY: NO_REPLY\n"
                   "## Heartbeats\nreply HEARTBEAT_OK\n"),
        ])

    def test_stock_openclaw_files_with_their_own_headings(self):
        # Real OpenClaw layout: lines.push(`## ${path}`, "", content, ""), and the stock
        # templates open with a level-1 title ("# AGENTS.md - Your Workspace", "# SOUL.md -
        # Who You Are"); TOOLS.md often holds shell snippets with "# comment" lines. All of
        # that is file content and must be counted in the file, not in the base prompt.
        agents = ("# AGENTS.md - Your Workspace\n\nThis folder is home. Treat it that way.\n\n"
                  "## Every Session\n\n1. Read `SOUL.md`\n2. Read `USER.md`\n")
        soul = "# SOUL.md - Who You Are\n\nBe genuinely helpful.\n"
        tools = ("# TOOLS.md - Local Notes\n\n```bash\n# restart the gateway\nopenclaw gateway restart\n```\n")
        lines = ["You are a personal assistant running inside OpenClaw.", "# Project Context", "",
                 "The following project context files have been loaded:"]
        for path, content in (("/w/AGENTS.md", agents), ("/w/SOUL.md", soul), ("/w/TOOLS.md", tools)):
            lines += ["## " + path, "", content, ""]
        lines += ["## Silent Replies", "respond with ONLY: NO_REPLY", "## Runtime", "Runtime: agent=main"]
        prompt = "\n".join(lines)
        out = tokenspy.system_breakdown(prompt)
        self.assertEqual(sum(out[c] for c in COLUMNS), len(prompt))
        # each file: its whole content plus at most the blank separator lines around it
        for column, content in (("workspace_agents_chars", agents), ("workspace_soul_chars", soul),
                                ("workspace_tools_chars", tools)):
            with self.subTest(column):
                self.assertGreaterEqual(out[column], len(content))
                self.assertLessEqual(out[column], len(content) + 3)


if __name__ == "__main__":
    unittest.main()
