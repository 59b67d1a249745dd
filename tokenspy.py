#!/usr/bin/env python3
"""Token Spy: a transparent LLM API proxy that logs every turn's tokens and cost to SQLite.

    python3 tokenspy.py --port 9110          # then point your agent at http://127.0.0.1:9110

Agents keep talking to their provider (Anthropic Messages, OpenAI Chat Completions and
Responses, OpenAI-compatible servers) through Token Spy. Requests and responses are
relayed untouched, streams chunk by chunk; a copy of each exchange (a Flow) is handed to
one background thread that works out usage, cost and prompt metrics and writes a row.
The same port serves a JSON API and the dashboard.

    client -> relay -> upstream            (request threads; bytes only)
    relay  => Flow  -> queue -> Recorder -> SQLite   (one thread; parsing, pricing, writes)
    curl / dashboard -> JSON API -> read-only queries

Standard library only; Python 3.9 or newer. See README.md.
"""

import argparse
import bisect
import calendar
import email.parser
import http.client
import json
import logging
import os
import queue
import re
import socket
import ssl
import sys
import threading
import time
import zlib
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import tokenspy_db

__version__ = "0.1.0"

HERE = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("tokenspy")

# ---------------------------------------------------------------------------
# Settings: every command-line flag, its environment variables and its default
# ---------------------------------------------------------------------------

Option = namedtuple("Option", "flag env default help kind")

# kind: str | int | float | bool. The first env name is Token Spy's own; the others are the
# earlier implementation's names, still honoured. Flags win over environment variables.
OPTIONS = (
    Option("--host", ("TOKENSPY_HOST",), "127.0.0.1",
           "address to listen on; anything but loopback exposes the API and dashboard", str),
    Option("--port", ("TOKENSPY_PORT", "PORT"), 9110, "port to listen on (0 picks a free one)", int),
    Option("--agent", ("TOKENSPY_AGENT", "AGENT_NAME"), "my-agent",
           "agent name for requests that do not name one with /agent/NAME/", str),
    Option("--upstream", ("TOKENSPY_UPSTREAM", "UPSTREAM_BASE_URL"), None,
           "one upstream for every provider (e.g. a local vLLM at http://127.0.0.1:8000/v1)", str),
    Option("--anthropic-upstream", ("TOKENSPY_ANTHROPIC_UPSTREAM", "ANTHROPIC_UPSTREAM"),
           "https://api.anthropic.com", "upstream for Anthropic traffic", str),
    Option("--openai-upstream", ("TOKENSPY_OPENAI_UPSTREAM", "OPENAI_UPSTREAM"),
           "https://api.openai.com", "upstream for OpenAI-style traffic", str),
    Option("--local-upstream", ("TOKENSPY_LOCAL_UPSTREAM",), False,
           "the upstream is self-hosted: its turns cost $0 (a localhost URL alone does not decide it)", bool),
    Option("--local-model-agents", ("TOKENSPY_LOCAL_MODEL_AGENTS", "LOCAL_MODEL_AGENTS"), "",
           "comma-separated agents whose models are self-hosted ($0)", str),
    Option("--db", ("TOKENSPY_DB", "DB_PATH"), None,
           "SQLite file (default: $STATE_DIRECTORY/usage.db, else data/usage.db beside tokenspy.py)", str),
    Option("--settings", ("TOKENSPY_SETTINGS",), None,
           "shared settings file (default: settings.json beside the database)", str),
    Option("--sessions-dir", ("TOKENSPY_SESSIONS_DIR",), None,
           "this agent's session files (OpenClaw layout: <id>.jsonl + sessions.json)", str),
    Option("--agent-session-dirs", ("TOKENSPY_AGENT_SESSION_DIRS", "AGENT_SESSION_DIRS"), "",
           'JSON map of agent name to sessions dir, e.g. {"a": "~/.openclaw/agents/a/sessions"}', str),
    Option("--prices", ("TOKENSPY_PRICES",), None,
           "price overrides: Token Spy's prices.json format or LiteLLM's model_prices_and_context_window.json", str),
    Option("--inject-stream-usage", ("TOKENSPY_INJECT_STREAM_USAGE",), False,
           "add stream_options.include_usage to OpenAI chat streams that lack it (changes the request)", bool),
    Option("--timeout", ("TOKENSPY_TIMEOUT",), 600.0,
           "seconds to wait for upstream bytes (per read) before answering 504", float),
    Option("--connect-timeout", ("TOKENSPY_CONNECT_TIMEOUT",), 10.0, "seconds to connect upstream", float),
    Option("--max-body-mb", ("TOKENSPY_MAX_BODY_MB",), 64.0, "largest request body accepted (413 above)", float),
    Option("--timer-dropin", ("TOKENSPY_TIMER_DROPIN",), "/etc/systemd/system/tokenspy.timer.d/poll-interval.conf",
           "drop-in written when poll_interval_minutes changes", str),
    Option("--timer-unit", ("TOKENSPY_TIMER_UNIT",), "tokenspy.timer", "timer restarted after that change", str),
    Option("--log-level", ("TOKENSPY_LOG_LEVEL", "LOG_LEVEL"), "info", "debug, info, warning or error", str),
)

AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigError(Exception):
    """A start-up problem, told to the operator in one line."""


def _env_value(opt, environ):
    for name in opt.env:
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        try:
            if opt.kind is bool:
                if raw.strip().lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.strip().lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            return opt.kind(raw)
        except ValueError:
            raise ConfigError("environment variable %s=%r is not a valid %s" % (name, raw, opt.kind.__name__))
    return opt.default


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tokenspy.py",
        description="Transparent LLM API proxy that logs tokens, cost and session health to SQLite.",
        epilog="Each flag can also be set by the environment variables shown. See README.md.")
    parser.add_argument("--version", action="version", version="Token Spy " + __version__)
    for opt in OPTIONS:
        env = " [env: %s]" % ", ".join(opt.env)
        dest = opt.flag[2:].replace("-", "_")
        if opt.kind is bool:
            parser.add_argument(opt.flag, dest=dest, action="store_const", const=True, default=None,
                                help=opt.help + env)
        else:
            parser.add_argument(opt.flag, dest=dest, type=opt.kind, default=None, metavar=dest.upper(),
                                help="%s (default: %s)%s" % (opt.help, opt.default, env))
    return parser


def load_config(argv=None, environ=None):
    """Flags, then environment, then defaults -> a validated namespace. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    for opt in OPTIONS:
        dest = opt.flag[2:].replace("-", "_")
        if getattr(args, dest) is None:
            setattr(args, dest, _env_value(opt, environ))
    if not AGENT_NAME_RE.match(args.agent or ""):
        raise ConfigError("--agent %r: use letters, digits, '.', '_' or '-' (at most 64)" % args.agent)
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port %d is out of range 0-65535" % args.port)
    if args.upstream:
        args.anthropic_upstream = args.openai_upstream = args.upstream
    for flag in ("anthropic_upstream", "openai_upstream"):
        value = getattr(args, flag)
        try:
            Upstream.parse(value)
        except ValueError as exc:
            raise ConfigError("--%s %r: %s" % (flag.replace("_", "-"), value, exc))
    if args.db is None:
        state = environ.get("STATE_DIRECTORY")
        folder = state.split(":")[0] if state else os.path.join(HERE, "data")
        if not state:
            os.makedirs(folder, exist_ok=True)
        args.db = os.path.join(folder, "usage.db")
    args.db = os.path.abspath(os.path.expanduser(args.db))
    if args.settings is None:
        args.settings = os.path.join(os.path.dirname(args.db), "settings.json")
    args.local_model_agents = {a.strip() for a in args.local_model_agents.split(",") if a.strip()}
    try:
        dirs = json.loads(args.agent_session_dirs) if args.agent_session_dirs.strip() else {}
        if not isinstance(dirs, dict) or not all(isinstance(v, str) for v in dirs.values()):
            raise ValueError("not an object of name -> folder")
    except ValueError as exc:
        raise ConfigError("AGENT_SESSION_DIRS / --agent-session-dirs is not valid JSON (%s); "
                          'use {"agent": "/path/to/sessions"}' % exc)
    if args.sessions_dir:
        dirs[args.agent] = args.sessions_dir
    args.agent_session_dirs = {k: os.path.abspath(os.path.expanduser(v)) for k, v in dirs.items()}
    if args.max_body_mb <= 0 or args.timeout <= 0 or args.connect_timeout <= 0:
        raise ConfigError("--max-body-mb, --timeout and --connect-timeout must be positive")
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise ConfigError("--log-level %r: use debug, info, warning or error" % args.log_level)
    args.log_level = level
    return args


# ---------------------------------------------------------------------------
# Providers: which paths are metered, where they go, how their bodies are read
# ---------------------------------------------------------------------------

# Metered endpoints: request path (without query) -> (provider, api). Only these are
# logged as turns; every other path is relayed and not logged.
METERED = {
    "/v1/messages": ("anthropic", "messages"),
    "/v1/chat/completions": ("openai", "chat"),
    "/v1/responses": ("openai", "responses"),
    "/v1/completions": ("openai", "completions"),
    "/v1/embeddings": ("openai", "embeddings"),
}

# Client session ids, first present wins: Claude Code, Codex, others.
SESSION_HEADERS = ("x-claude-code-session-id", "session-id", "session_id", "x-session-id")
REQUEST_ID_HEADERS = ("request-id", "x-request-id")

# Hop-by-hop headers (RFC 9110 7.6.1 and RFC 2616 13.5.1): never forwarded either way.
# Host is rewritten and Content-Length recomputed, so they are dropped from requests too.
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization"))
REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect"}

# What the Recorder can decode; on metered paths Accept-Encoding is narrowed to these.
DECODABLE = ("gzip", "deflate", "identity", "x-gzip")


def forwardable(pairs, drop, connection):
    """Header pairs without hop-by-hop ones (`drop`) and those named in Connection."""
    named = {t.strip().lower() for t in (connection or "").split(",")}
    return [(k, v) for k, v in pairs if k.lower() not in drop and k.lower() not in named]


def route_provider(path, headers):
    """(provider, api or None) for a request path (no query) and its headers."""
    hit = METERED.get(path)
    if hit:
        return hit
    if path.startswith("/v1/messages/") or headers.get("anthropic-version"):
        return "anthropic", None
    return "openai", None


def narrow_accept_encoding(value):
    """Keep only the encodings the Recorder can decode; None when nothing needs to change."""
    if value is None:
        return None
    kept, changed = [], False
    for part in value.split(","):
        token = part.split(";")[0].strip().lower()
        if not token:
            continue
        if token in DECODABLE:
            kept.append(part.strip())
        else:
            changed = True
    if not changed:
        return None
    return ", ".join(kept) if kept else "identity"


# ---------------------------------------------------------------------------
# Usage: what each API's response says it cost
# ---------------------------------------------------------------------------

class Reading:
    """What the Recorder read from one response body."""

    def __init__(self):
        self.raw = None            # the provider's usage object (merged, for Anthropic streams)
        self.model = None
        self.stop_reason = None
        self.tools = []            # tool names the response called, in order
        self.error = None
        self.complete = False      # the usage is final (not a start-of-stream placeholder)


def _get(obj, *keys):
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_text(obj):
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        kind = err.get("type") or err.get("code")
        msg = err.get("message") or ""
        return ("%s: %s" % (kind, msg)) if kind else msg
    if isinstance(err, str):
        return err
    return None


class AnthropicMessages:
    """Anthropic Messages. Usage is exclusive: input_tokens leaves out cache reads/writes."""

    # Events that carry usage, the stop reason, tool names or errors. The bulk of a stream
    # (content_block_delta, ping) is never parsed.
    EVENTS = frozenset(("message_start", "message_delta", "content_block_start", "error", None))

    @staticmethod
    def wants(name, data):
        return name in AnthropicMessages.EVENTS

    @staticmethod
    def event(r, name, obj):
        kind = obj.get("type") or name
        if kind == "message_start":
            msg = obj.get("message") or {}
            r.model = msg.get("model") or r.model
            if isinstance(msg.get("usage"), dict):
                r.raw = dict(msg["usage"])
        elif kind == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                # Cumulative totals: overwrite field by field, never add.
                merged = dict(r.raw or {})
                merged.update({k: v for k, v in usage.items() if v is not None})
                r.raw = merged
                r.complete = True
            reason = _get(obj, "delta", "stop_reason")
            if reason:
                r.stop_reason = reason
        elif kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") in ("tool_use", "server_tool_use") and block.get("name"):
                r.tools.append(block["name"])
        elif kind == "error":
            r.error = _error_text(obj) or "stream error"

    @staticmethod
    def body(r, obj):
        if obj.get("type") == "error" or "error" in obj and "usage" not in obj:
            r.error = _error_text(obj)
            return
        r.model = obj.get("model")
        r.stop_reason = obj.get("stop_reason")
        if isinstance(obj.get("usage"), dict):
            r.raw = obj["usage"]
            r.complete = True
        for block in obj.get("content") or ():
            if isinstance(block, dict) and block.get("type") in ("tool_use", "server_tool_use"):
                r.tools.append(block.get("name"))

    @staticmethod
    def tokens(raw):
        cache_write = _int(raw.get("cache_creation_input_tokens"))
        split = raw.get("cache_creation")
        if isinstance(split, dict):
            w5, w1 = _int(split.get("ephemeral_5m_input_tokens")), _int(split.get("ephemeral_1h_input_tokens"))
        else:
            w5, w1 = cache_write, (0 if cache_write is not None else None)
        return {
            "input_tokens": _int(raw.get("input_tokens")),
            "output_tokens": _int(raw.get("output_tokens")),
            "cache_read_tokens": _int(raw.get("cache_read_input_tokens")),
            "cache_write_tokens": cache_write,
            "cache_write_5m_tokens": w5,
            "cache_write_1h_tokens": w1,
            "reasoning_tokens": _int(_get(raw, "output_tokens_details", "thinking_tokens")),
        }


def openai_tokens(raw, prompt_key="prompt_tokens", output_key="completion_tokens"):
    """OpenAI-style usage (inclusive prompt) -> Token Spy's convention (uncached input).

    Cached tokens come from the first of prompt_tokens_details.cached_tokens (OpenAI,
    vLLM), prompt_cache_hit_tokens (DeepSeek) or a top-level cached_tokens (Moonshot).
    """
    details_key = "input_tokens_details" if prompt_key == "input_tokens" else "prompt_tokens_details"
    details = raw.get(details_key) if isinstance(raw.get(details_key), dict) else {}
    prompt = _int(raw.get(prompt_key))
    cached = _int(details.get("cached_tokens"))
    if cached is None:
        cached = _int(raw.get("prompt_cache_hit_tokens"))
    if cached is None:
        cached = _int(raw.get("cached_tokens"))
    write = _int(details.get("cache_write_tokens"))
    ttl = details.get("cache_write_tokens_details") if isinstance(details.get("cache_write_tokens_details"), dict) else {}
    w_long = _int(ttl.get("ttl_12h_tokens"))
    w_short = _int(ttl.get("ttl_30m_tokens"))
    if write is None and prompt is not None:
        write = 0                                  # no write field: nothing was written
    if write is not None and w_short is None:
        w_short = write - (w_long or 0)
        w_long = w_long or 0
    out_details = raw.get(output_key.replace("_tokens", "_tokens_details"))
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else None
    uncached = None
    if prompt is not None:
        uncached = max(0, prompt - (cached or 0) - (write or 0))
    return {
        "input_tokens": uncached,
        "output_tokens": _int(raw.get(output_key)),
        "cache_read_tokens": cached if cached is not None else (0 if prompt is not None else None),
        "cache_write_tokens": write,
        "cache_write_5m_tokens": w_short,
        "cache_write_1h_tokens": w_long,
        "reasoning_tokens": reasoning,
    }


class OpenAIChat:
    """Chat Completions (and legacy completions / embeddings). Usage is inclusive."""

    @staticmethod
    def wants(name, data):
        """Skip plain content deltas: no usage object, no finish reason, no tool call, no error."""
        if '"usage":{' in data or '"usage": {' in data or '"tool_calls"' in data or '"error"' in data:
            return True
        return '"finish_reason":null' not in data and '"finish_reason": null' not in data

    @staticmethod
    def event(r, name, obj):
        if obj.get("error"):
            r.error = _error_text(obj)
            return
        r.model = obj.get("model") or r.model
        usage = obj.get("usage")
        choices = obj.get("choices") if isinstance(obj.get("choices"), list) else []
        if not isinstance(usage, dict) and choices and isinstance(choices[0], dict):
            usage = choices[0].get("usage")       # Moonshot nests it on the finish chunk
        if isinstance(usage, dict):
            r.raw = usage                         # repeated by some servers: last wins
            r.complete = True
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                r.stop_reason = choice["finish_reason"]
            for call in _get(choice, "delta", "tool_calls") or ():
                name = _get(call, "function", "name")
                if name:
                    r.tools.append(name)

    @staticmethod
    def body(r, obj):
        if obj.get("error") and not obj.get("usage"):
            r.error = _error_text(obj)
            return
        r.model = obj.get("model")
        if isinstance(obj.get("usage"), dict):
            r.raw = obj["usage"]
            r.complete = True
        choices = obj.get("choices") if isinstance(obj.get("choices"), list) else []
        if choices and isinstance(choices[0], dict):
            r.stop_reason = choices[0].get("finish_reason")
        for choice in choices:
            for call in _get(choice, "message", "tool_calls") or ():
                name = _get(call, "function", "name")
                if name:
                    r.tools.append(name)

    @staticmethod
    def tokens(raw):
        return openai_tokens(raw)


class OpenAIResponses:
    """Responses API. Usage only in the terminal event's response object; inclusive."""

    TERMINAL = ("response.completed", "response.incomplete", "response.failed")
    EVENTS = frozenset(TERMINAL + ("response.created", "response.in_progress", "response.output_item.done",
                                   "error", None))

    @staticmethod
    def wants(name, data):
        return name in OpenAIResponses.EVENTS

    @staticmethod
    def event(r, name, obj):
        kind = obj.get("type") or name
        if kind in OpenAIResponses.TERMINAL:
            OpenAIResponses.body(r, obj.get("response") or {}, streamed=True)
        elif kind in ("response.created", "response.in_progress"):
            r.model = _get(obj, "response", "model") or r.model
        elif kind == "response.output_item.done":
            item = obj.get("item") or {}
            name = OpenAIResponses.tool_called(item)
            if name:
                r.tools.append(name)
        elif kind == "error":
            r.error = "%s: %s" % (obj.get("code") or "error", obj.get("message") or "")

    @staticmethod
    def tool_called(item):
        """The tool an output item called: a function's name, or a built-in's type without
        '_call' (web_search_call -> web_search, as its definition {"type": "web_search"})."""
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            return None
        kind = item["type"]
        if kind in ("function_call", "custom_tool_call"):
            return item.get("name")
        if kind.endswith("_call") and kind != "function_call_output":
            return kind[:-len("_call")]
        return None

    @staticmethod
    def body(r, obj, streamed=False):
        if obj.get("error") and obj.get("object") != "response" and not streamed:
            r.error = _error_text(obj)
            return
        r.model = obj.get("model") or r.model
        status = obj.get("status")
        if status == "incomplete":
            r.stop_reason = _get(obj, "incomplete_details", "reason") or "incomplete"
        elif status:
            r.stop_reason = status
        if status == "failed":
            r.error = _error_text(obj) or "response failed"
        if isinstance(obj.get("usage"), dict):
            r.raw = obj["usage"]
            r.complete = True
        if not streamed:
            for item in obj.get("output") or ():
                name = OpenAIResponses.tool_called(item)
                if name:
                    r.tools.append(name)

    @staticmethod
    def tokens(raw):
        return openai_tokens(raw, "input_tokens", "output_tokens")


PARSERS = {
    "messages": AnthropicMessages,
    "chat": OpenAIChat,
    "completions": OpenAIChat,
    "embeddings": OpenAIChat,
    "responses": OpenAIResponses,
}


_SSE_LINES = re.compile(r"\r\n|\r|\n")


def iter_sse(text):
    """(event name, data) for each SSE event, per the WHATWG rules the SDKs follow."""
    name, data = None, []
    for line in _SSE_LINES.split(text):        # not str.splitlines: JSON may hold U+2028
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if data:
        yield name, "\n".join(data)


def read_response(api, body, is_sse):
    """Parse a (decoded) response body with the API's parser -> Reading."""
    parser = PARSERS[api]
    r = Reading()
    if is_sse:
        wanted = parser.wants
        for name, data in iter_sse(body.decode("utf-8", "replace")):
            if data.startswith("[DONE]") or not data.startswith("{") or not wanted(name, data):
                continue
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            if isinstance(obj, dict):
                parser.event(r, name, obj)
    elif body:
        try:
            obj = json.loads(body)
        except ValueError:
            return r
        if isinstance(obj, dict):
            parser.body(r, obj)
    return r


def decode_body(data, encoding):
    """Undo Content-Encoding for the Recorder's copy. None when it cannot."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return data
    try:
        if encoding in ("gzip", "x-gzip"):
            # A truncated gzip stream (client gone) still yields what arrived.
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
        if encoding == "deflate":
            try:
                return zlib.decompress(data)
            except zlib.error:
                return zlib.decompress(data, -zlib.MAX_WBITS)
    except zlib.error:
        return None
    return None


# ---------------------------------------------------------------------------
# Requests: what the agent sent (prompt size, system prompt breakdown, tools)
# ---------------------------------------------------------------------------

# OpenClaw injects workspace files under "# Project Context" as "## FILE.md" sections.
WORKSPACE_FILES = {
    "AGENTS.md": "workspace_agents_chars", "SOUL.md": "workspace_soul_chars",
    "TOOLS.md": "workspace_tools_chars", "IDENTITY.md": "workspace_identity_chars",
    "USER.md": "workspace_user_chars", "HEARTBEAT.md": "workspace_heartbeat_chars",
    "BOOTSTRAP.md": "workspace_bootstrap_chars", "MEMORY.md": "workspace_memory_chars",
}
SYSTEM_COLUMNS = tuple(WORKSPACE_FILES.values()) + (
    "workspace_other_chars", "skill_injection_chars", "base_prompt_chars")
_FILE_COLUMNS = frozenset(WORKSPACE_FILES.values()) | {"workspace_other_chars"}
_PROJECT_CONTEXT = re.compile(r"^# Project Context\b", re.M)
_SECTION = re.compile(r"^(#{1,2}) (.*?)\s*$", re.M)
_END_MARKERS = ("Silent Replies", "Heartbeats", "Runtime")


def system_breakdown(text):
    """Split an OpenClaw system prompt into workspace files, skills and the base prompt.

    A workspace file runs from the line after its "## NAME.md" heading to the next
    marker: another "## *.md" heading, "## Skills (mandatory)" or one of the end markers
    (Silent Replies, Heartbeats, Runtime). A file's own "# " and "## " headings stay
    part of it. Unknown *.md files count as workspace_other_chars.
    Skills run from their heading (included) to the next "## " heading.
    """
    out = dict.fromkeys(SYSTEM_COLUMNS, 0)
    total = len(text)
    spans = []                     # (column, start, header_end)
    start_ctx = _PROJECT_CONTEXT.search(text)
    for m in _SECTION.finditer(text):
        level, title = m.group(1), m.group(2)
        if level == "#":
            if spans and spans[-1][0] in _FILE_COLUMNS:
                continue          # a file's own "# Title" (OpenClaw's AGENTS.md starts with one)
            spans.append((None, m.start(), m.end()))
            continue
        if title.startswith("Skills (mandatory)"):
            spans.append(("skill_injection_chars", m.start(), m.start()))
        elif title in _END_MARKERS:
            spans.append((None, m.start(), m.end()))
        elif title.endswith(".md") and start_ctx and m.start() > start_ctx.start():
            name = title.rsplit("/", 1)[-1]
            spans.append((WORKSPACE_FILES.get(name, "workspace_other_chars"), m.start(), m.end() + 1))
        elif spans and spans[-1][0] == "skill_injection_chars":
            spans.append((None, m.start(), m.end()))       # skills end at the next heading
    for i, (column, start, body_start) in enumerate(spans):
        if column is None:
            continue
        end = spans[i + 1][1] if i + 1 < len(spans) else total
        out[column] += max(0, end - min(body_start, end))
    out["base_prompt_chars"] = max(0, total - sum(out[c] for c in SYSTEM_COLUMNS if c != "base_prompt_chars"))
    return out


def _text(content):
    """Text of a system prompt / message content: a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content
                         if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _json_chars(value):
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _tool_name(tool):
    """A tool definition's name in any of the three APIs (built-ins go by their type)."""
    if not isinstance(tool, dict):
        return "?"
    name = tool.get("name") or _get(tool, "function", "name") or tool.get("type")
    return name if isinstance(name, str) else "?"


def analyze_request(api, body):
    """Prompt metrics of a request body -> dict of usage columns (what could be read)."""
    out = {"request_body_bytes": len(body)}
    try:
        req = json.loads(body) if body else None
    except ValueError:
        return out
    if not isinstance(req, dict):
        return out
    model = req.get("model")
    out["requested_model"] = model if isinstance(model, str) else None
    out["stream"] = 1 if req.get("stream") is True else 0
    system, history, messages = "", None, None
    if api == "messages":
        messages = req.get("messages")
        history = messages
        system = _text(req.get("system"))
    elif api in ("chat", "responses"):
        # OpenAI: system/developer messages (chat) or input items (Responses, which may
        # also have `instructions`) are the system prompt; the rest is the conversation.
        messages = req.get("messages") if api == "chat" else req.get("input")
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        parts = [_text(req.get("instructions"))] if api == "responses" and req.get("instructions") else []
        if isinstance(messages, list):
            is_system = [isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages]
            parts += [_text(m.get("content")) for m, sys_ in zip(messages, is_system) if sys_]
            history = [m for m, sys_ in zip(messages, is_system) if not sys_]
        system = "\n".join(parts)
    elif api == "completions":
        prompt = req.get("prompt")
        history = [prompt] if prompt is not None else None
    if isinstance(messages, list):
        roles = [m.get("role") for m in messages if isinstance(m, dict)]
        out["message_count"] = len(messages)
        out["user_message_count"] = roles.count("user")
        out["assistant_message_count"] = roles.count("assistant")
    if isinstance(history, list):
        out["conversation_history_chars"] = _json_chars(history)
    out["system_prompt_total_chars"] = len(system)
    out.update(system_breakdown(system))
    tools = req.get("tools") if isinstance(req.get("tools"), list) else []
    functions = req.get("functions") if isinstance(req.get("functions"), list) else []
    out["tool_count"] = len(tools) + len(functions)
    out["tool_defs_chars"] = _json_chars(tools + functions) if tools or functions else 0
    if tools or functions:
        out["tool_defs"] = [(_tool_name(t), _json_chars(t)) for t in tools + functions]
    return out


def inject_include_usage(body):
    """Chat stream request without stream_options.include_usage -> body with it, else None."""
    try:
        req = json.loads(body)
    except ValueError:
        return None
    if not isinstance(req, dict) or req.get("stream") is not True:
        return None
    opts = req.get("stream_options")
    if isinstance(opts, dict) and opts.get("include_usage"):
        return None
    req["stream_options"] = dict(opts or {}, include_usage=True)
    return json.dumps(req, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------
# Prices: one table in prices.json, overridable with --prices
# ---------------------------------------------------------------------------

_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2})$")
RATE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_long")
# LiteLLM's per-token fields -> Token Spy's per-1M-token rates.
_LITELLM = {
    "input_cost_per_token": "input", "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read", "cache_creation_input_token_cost": "cache_write",
    "cache_creation_input_token_cost_above_1hr": "cache_write_long",
}
_LITELLM_TIERS = ("100k", "128k", "200k", "256k", "272k", "512k")


def _from_litellm(entry):
    out = {}
    for src, dst in _LITELLM.items():
        if isinstance(entry.get(src), (int, float)):
            out[dst] = entry[src] * 1e6
    if isinstance(entry.get("cache_creation_input_token_cost_above_12hr"), (int, float)):
        out["cache_write_long"] = entry["cache_creation_input_token_cost_above_12hr"] * 1e6
    for tier in _LITELLM_TIERS:
        above = {}
        for src, dst in _LITELLM.items():
            value = entry.get("%s_above_%s_tokens" % (src, tier))
            if isinstance(value, (int, float)):
                above[dst] = value * 1e6
        if above:
            above["tokens"] = int(tier[:-1]) * 1000
            out["above"] = above
            break
    if "input" not in out or "output" not in out:
        return None
    out["provider"] = entry.get("litellm_provider")
    return out


class Prices:
    """The price table: model name -> rates in USD per 1M tokens."""

    def __init__(self, path=os.path.join(HERE, "prices.json"), override=None):
        with open(path, encoding="utf-8") as fh:
            table = json.load(fh)
        self.version = table.get("version", "unknown")
        self.models = dict(table["models"])
        if override:
            self.version += "+" + os.path.basename(override)
            self.models.update(self.load_override(override))

    @staticmethod
    def load_override(path):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ConfigError("--prices %s: cannot read it (%s)" % (path, exc))
        if not isinstance(data, dict):
            raise ConfigError("--prices %s: expected a JSON object" % path)
        if "models" in data:
            models = data["models"]
            if not isinstance(models, dict):
                raise ConfigError("--prices %s: \"models\" must be an object of model name -> rates" % path)
        else:  # LiteLLM's model_prices_and_context_window.json
            models = {}
            for name, entry in data.items():
                if isinstance(entry, dict) and name != "sample_spec":
                    converted = _from_litellm(entry)
                    if converted:
                        models[name] = converted
        if not models:
            raise ConfigError("--prices %s: no model prices in it (expected Token Spy's {\"models\": {...}} "
                              "or LiteLLM's model_prices_and_context_window.json)" % path)
        for name, entry in models.items():
            if not isinstance(entry, dict) or not all(
                    isinstance(entry.get(k), (int, float)) for k in ("input", "output")):
                raise ConfigError("--prices %s: model %r needs numeric input and output rates" % (path, name))
        return models

    def lookup(self, model):
        """(key, entry) for a model name: exact, then without a date suffix, then without a
        provider prefix (and both). Never a substring match. (None, None) if unpriced."""
        if not isinstance(model, str) or not model:
            return None, None
        bare = model.rsplit("/", 1)[-1]
        for name in (model, _DATE_SUFFIX.sub("", model), bare, _DATE_SUFFIX.sub("", bare)):
            for candidate in (name, name.lower()):
                if candidate in self.models:
                    return candidate, self.models[candidate]
        return None, None

    @staticmethod
    def cost(entry, tokens, when):
        """USD for one turn. None when nothing is known about its usage."""
        parts = Prices.cost_parts(entry, tokens, when)
        return parts["total"] if parts else None

    @staticmethod
    def cost_parts(entry, tokens, when):
        """USD for one turn, and its parts -> dict or None when nothing is known.

        {"total", "input", "output", "cache_read", "cache_write", "savings"}: savings is
        what caching saved against paying the input rate for the whole prompt (reads
        cheaper, writes dearer), so it can be negative.
        """
        known = [tokens.get(k) for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")]
        if all(v is None for v in known):
            return None
        inp, out, read, write = (v or 0 for v in known)
        rates = dict(entry)
        above = entry.get("above")
        if isinstance(above, dict) and inp + read + write > above.get("tokens", float("inf")):
            rates.update(above)
        peak = entry.get("peak_hours_utc")
        if peak and isinstance(entry.get("off_peak"), dict):
            hour = time.gmtime(when).tm_hour
            if not any(lo <= hour < hi for lo, hi in peak):
                rates.update(entry["off_peak"])
        r_in = rates["input"]
        r_read = rates.get("cache_read", r_in)
        r_write = rates.get("cache_write", r_in)
        r_long = rates.get("cache_write_long", r_write)
        long_tokens = min(write, tokens.get("cache_write_1h_tokens") or 0)
        short_tokens = write - long_tokens
        parts = {"input": inp * r_in, "output": out * rates["output"], "cache_read": read * r_read,
                 "cache_write": short_tokens * r_write + long_tokens * r_long}
        parts["savings"] = (inp + read + write) * r_in - parts["input"] - parts["cache_read"] - parts["cache_write"]
        out = {k: round(v / 1e6, 8) for k, v in parts.items()}
        out["total"] = round(sum(parts[k] for k in ("input", "output", "cache_read", "cache_write")) / 1e6, 8)
        return out


# ---------------------------------------------------------------------------
# Flow: one proxied exchange, as the relay saw it
# ---------------------------------------------------------------------------

class Flow:
    """One proxied request/response. The relay fills it; the Recorder reads it.

    Invariant: every metered flow is submitted to the Recorder exactly once, when the
    relay is done with it (complete, failed or abandoned by the client), and becomes
    exactly one row. The relay only appends to it; all parsing happens later.
    """

    __slots__ = ("agent", "provider", "api", "upstream", "method", "path", "started", "t0",
                 "request_headers", "request_body", "status", "response_headers", "chunks",
                 "response_bytes", "ttfb", "t_end", "error", "collect_limit", "collected")

    def __init__(self, agent, provider, api, upstream, method, path, headers, body, started=None, t0=None):
        self.agent = agent
        self.provider = provider
        self.api = api
        self.upstream = upstream
        self.method = method
        self.path = path
        self.started = time.time() if started is None else started      # when the request arrived
        self.t0 = time.perf_counter() if t0 is None else t0
        self.request_headers = headers          # the client's headers (email.message.Message)
        self.request_body = body
        self.status = None
        self.response_headers = None            # list of (name, value) from upstream
        self.chunks = []                         # response body pieces, as relayed
        self.response_bytes = 0
        self.ttfb = None
        self.t_end = None
        self.error = None
        self.collect_limit = 64 << 20
        self.collected = 0

    def add(self, data):
        self.response_bytes += len(data)
        if self.collected < self.collect_limit:
            self.chunks.append(data)
            self.collected += len(data)


def _header(pairs, name):
    name = name.lower()
    for k, v in pairs or ():
        if k.lower() == name:
            return v
    return None


def base_row(flow):
    """What the relay itself knows of a flow: no parsing, so it cannot fail."""
    return {
        "timestamp": tokenspy_db.iso_utc(flow.started), "ts": int(flow.started * 1000), "agent": flow.agent,
        "provider": flow.provider, "api": flow.api, "upstream": flow.upstream,
        "method": flow.method, "path": flow.path, "status": flow.status, "error": flow.error,
        "duration_ms": int(((flow.t_end or time.perf_counter()) - flow.t0) * 1000),
        "ttfb_ms": int((flow.ttfb - flow.t0) * 1000) if flow.ttfb else None,
        "request_body_bytes": len(flow.request_body or b""), "response_body_bytes": flow.response_bytes,
        "usage_source": "missing", "estimated_cost_usd": None,
    }


def build_row(flow, prices, local, analyzer=None):
    """Everything the Recorder logs for a flow -> dict of tokenspy_db.USAGE_COLUMNS."""
    row = base_row(flow)
    row["request_id"] = next(filter(None, (_header(flow.response_headers, h) for h in REQUEST_ID_HEADERS)), None)
    for name in SESSION_HEADERS:
        if flow.request_headers.get(name):
            row["client_session_id"] = flow.request_headers.get(name)[:200]
            break
    row.update((analyzer or analyze_request)(flow.api, flow.request_body))
    reading = Reading()
    if flow.chunks:
        ctype = (_header(flow.response_headers, "content-type") or "").lower()
        body = decode_body(b"".join(flow.chunks), _header(flow.response_headers, "content-encoding"))
        if body is None:
            note = "response in %s encoding: usage not readable" % _header(flow.response_headers, "content-encoding")
            row["error"] = "; ".join(filter(None, (row["error"], note)))
        else:
            reading = read_response(flow.api, body, "text/event-stream" in ctype)
            if "text/event-stream" in ctype:
                row["stream"] = 1
    row["response_model"] = reading.model
    row["model"] = reading.model or row.get("requested_model")
    row["stop_reason"] = reading.stop_reason
    row["tools_called"] = json.dumps(reading.tools) if reading.tools else None
    if reading.error and not row["error"]:
        row["error"] = reading.error[:2000]
    if reading.raw is not None:
        row["usage_raw"] = json.dumps(reading.raw, separators=(",", ":"))
        row.update(PARSERS[flow.api].tokens(reading.raw))
        partial = not reading.complete or (flow.error and flow.status == 200 and flow.api == "messages"
                                           and not reading.stop_reason)
        row["usage_source"] = "partial" if partial else "provider"
        if flow.api == "embeddings" and row.get("output_tokens") is None:
            row["output_tokens"] = 0
    if flow.agent in local.get("agents", ()) or local.get("upstream"):
        row["price_entry"] = "local"
        if row["usage_source"] != "missing":
            row.update(estimated_cost_usd=0.0, cost_input_usd=0.0, cost_output_usd=0.0,
                       cost_cache_read_usd=0.0, cost_cache_write_usd=0.0, cache_savings_usd=0.0)
    else:
        key, entry = prices.lookup(row["model"])
        row["price_entry"] = key
        cost = prices.cost_parts(entry, row, flow.started) if entry is not None else None
        if cost is not None:
            row["estimated_cost_usd"] = cost["total"]
            for part in ("input", "output", "cache_read", "cache_write"):
                row["cost_%s_usd" % part] = cost[part]
            row["cache_savings_usd"] = cost["savings"]
    row["price_version"] = prices.version
    return row


class Analyzer:
    """analyze_request for the Recorder, in a helper process when the body is large.

    json.loads and json.dumps of a multi-megabyte request hold the interpreter lock for
    milliseconds, and every relay thread would wait that long for its next byte. Bodies
    over INLINE_MAX go to `tokenspy.py _analyze`, a child process, through a pipe
    (writing and reading a pipe releases the lock). If the child fails, the work is done
    here instead and the child is started again on the next large body.
    """

    INLINE_MAX = 128 * 1024

    def __init__(self):
        self.proc = None

    def __call__(self, api, body):
        if len(body) <= self.INLINE_MAX:
            return analyze_request(api, body)
        try:
            proc = self._child()
            proc.stdin.write(b"%s %d\n" % (api.encode(), len(body)))
            proc.stdin.write(body)
            proc.stdin.flush()
            line = proc.stdout.readline()
            if not line:
                raise EOFError("the analyzer process exited")
            return json.loads(line)
        except Exception as exc:
            log.warning("request analyzer process failed (%s); analyzing in-process", exc)
            self.close()
            return analyze_request(api, body)

    def _child(self):
        if self.proc is None or self.proc.poll() is not None:
            import subprocess
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_analyze"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1 << 16)
        return self.proc

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except Exception:
                self.proc.kill()
            self.proc = None


def analyzer_main():
    """tokenspy.py _analyze: serve Analyzer requests on stdin/stdout until stdin closes."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = inp.readline()
        if not header:
            return 0
        api, size = header.split()
        body = inp.read(int(size))
        try:
            result = analyze_request(api.decode(), body)
        except Exception:
            result = {"request_body_bytes": len(body)}
        out.write(json.dumps(result).encode() + b"\n")
        out.flush()


# ---------------------------------------------------------------------------
# Recorder: the one thread that parses, prices and writes
# ---------------------------------------------------------------------------

class Recorder(threading.Thread):
    """Drains finished flows from a queue, turns them into rows and writes them in batches.

    Nothing here runs on a request thread. A failure to parse a flow still logs a row
    (with the error); a failure to write keeps the rows and retries, never drops them
    silently (beyond MAX_PENDING rows, the oldest are dropped with an error in the log).
    """

    MAX_PENDING = 100000
    BATCH = 500
    BATCH_WINDOW = 0.05          # seconds
    # Flows waiting to be read. A CPU-saturated process, or a database locked by another
    # process for longer than the busy timeout, can fill it (failed writes wait in
    # `pending` while the queue keeps draining). Past it, a relay thread that has already
    # answered its client waits for a free place before taking the connection's next
    # request: memory stays bounded and no turn is dropped.
    MAX_QUEUED = 500

    def __init__(self, store, prices, local, hooks=()):
        super().__init__(name="tokenspy-recorder", daemon=True)
        self.store = store
        self.prices = prices
        self.local = local
        self.hooks = list(hooks)           # called with the written rows (after commit)
        self.queue = queue.Queue(self.MAX_QUEUED)
        self.analyzer = Analyzer()
        self.pending = []
        self.written = 0
        self.failures = 0
        self.counters = {}                 # (agent, model) -> turns, 4 token kinds, cost, failed

    def submit(self, flow):
        self.queue.put(flow)

    @property
    def backlog(self):
        """Turns relayed but not yet written."""
        return self.queue.qsize() + len(self.pending)

    def flush(self, timeout=10.0):
        """Wait until everything submitted so far is written (for tests and shutdown)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.queue.unfinished_tasks == 0 and not self.pending:
                return True
            time.sleep(0.005)
        return False

    def stop(self):
        self.queue.put(None)

    def run(self):
        while True:
            try:
                item = self.queue.get(timeout=0.5 if self.pending else None)
            except queue.Empty:
                self._write()                 # retry rows kept after a failed write
                continue
            batch = [item]
            # Gather what arrives within BATCH_WINDOW: one transaction for many turns
            # costs far less than one each, and a row may land a few ms later.
            deadline = time.monotonic() + self.BATCH_WINDOW
            while len(batch) < self.BATCH and item is not None:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
                if batch[-1] is None:
                    break
            stop = None in batch
            for flow in batch:
                if flow is not None:
                    self.pending.append(self._row(flow))
                    time.sleep(0)        # let waiting relay threads have the interpreter lock
            self._write()
            for _ in batch:
                self.queue.task_done()
            if stop:
                self.analyzer.close()
                return

    def _row(self, flow):
        try:
            return build_row(flow, self.prices, self.local, self.analyzer)
        except Exception as exc:  # a parser bug must not lose the turn
            log.exception("could not read a %s turn; logging it without usage", flow.api)
            return dict(base_row(flow), error="token spy could not read this turn: %r" % exc)

    def _write(self):
        if not self.pending:
            return
        rows = self.pending
        try:
            ids = self.store.insert_turns(rows, attempts=1)   # this loop retries; keep draining
        except Exception as exc:
            self.failures += 1
            log.error("database write failed (%s); %d rows kept for retry", exc, len(rows))
            if len(rows) > self.MAX_PENDING:
                dropped = len(rows) - self.MAX_PENDING
                del rows[:dropped]
                log.error("dropped %d oldest rows: the database has been failing too long", dropped)
            time.sleep(min(5.0, 0.1 * self.failures))
            return
        self.failures = 0
        self.pending = []
        self.written += len(rows)
        for row in rows:
            c = self.counters.setdefault((row.get("agent"), row.get("model") or "unknown"), [0] * 7)
            c[0] += 1
            for i, key in enumerate(("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                                     "estimated_cost_usd"), start=1):
                c[i] += row.get(key) or 0
            c[6] += 1 if (row.get("status") or 0) >= 400 or row.get("error") else 0
        for row, rid in zip(rows, ids):
            row["id"] = rid
            log.info("turn %s %s %s in=%s out=%s cache_r=%s cache_w=%s $%s %sms %s",
                     row.get("agent"), row.get("model"), row.get("status"), row.get("input_tokens"),
                     row.get("output_tokens"), row.get("cache_read_tokens"), row.get("cache_write_tokens"),
                     row.get("estimated_cost_usd"), row.get("duration_ms"), row.get("usage_source"))
        for hook in self.hooks:
            try:
                hook(rows)
            except Exception:
                log.exception("post-log hook %r failed", hook)


# ---------------------------------------------------------------------------
# Upstreams: connection pools with keep-alive
# ---------------------------------------------------------------------------

class UpstreamError(Exception):
    """Could not get a response from the upstream (refused, DNS, TLS, timeout)."""

    def __init__(self, message, timeout=False):
        super().__init__(message)
        self.timeout = timeout


class Upstream:
    """One upstream base URL and its pool of idle persistent connections."""

    MAX_IDLE = 32

    def __init__(self, url, connect_timeout=10.0, read_timeout=600.0):
        self.url = url.rstrip("/")
        self.scheme, self.host, self.port, self.base_path = self.parse(url)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        host = "[%s]" % self.host if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        self.host_header = host if self.port == default else "%s:%d" % (host, self.port)
        self._idle = []
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context() if self.scheme == "https" else None

    @staticmethod
    def parse(url):
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL; give one like https://api.anthropic.com")
        if parts.query or parts.fragment:
            raise ValueError("a base URL has no query string or fragment")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError("the port is not a number 1-65535")
        return parts.scheme, parts.hostname, port, parts.path.rstrip("/")

    def target(self, path):
        """Upstream path for a client path: base path + path, never /v1/v1."""
        if self.base_path.endswith("/v1") and (path == "/v1" or path.startswith("/v1/")):
            return self.base_path[:-3] + path
        return self.base_path + path

    def _connection(self):
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        return conn, False

    def release(self, conn, resp):
        """Back to the pool when the response was read to the end and may be reused."""
        if resp is not None and resp.length == 0 and not resp.isclosed():
            resp.close()      # all Content-Length bytes read (Python < 3.13 does not close it itself)
        if resp is not None and resp.isclosed() and not resp.will_close and conn.sock is not None:
            with self._lock:
                if len(self._idle) < self.MAX_IDLE:
                    self._idle.append(conn)
                    return
        conn.close()

    def request(self, method, path, headers, body):
        """Send one request; -> (connection, response with headers read). Raises UpstreamError.

        A reused idle connection that the upstream already closed is retried once on a
        fresh one (nothing reached the upstream in that case).
        """
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                if conn.sock is None:
                    conn.connect()
                conn.sock.settimeout(self.read_timeout)
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", self.host_header)
                for name, value in headers:
                    conn.putheader(name, value)
                if body or method in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body if body else None)
                return conn, conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    ConnectionAbortedError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise UpstreamError("upstream closed the connection: %s" % exc)
            except socket.timeout:
                conn.close()
                raise UpstreamError("upstream did not answer within %.0f s" % self.read_timeout, timeout=True)
            except (OSError, http.client.HTTPException, ValueError) as exc:   # ValueError: a header
                conn.close()                                                   # http.client refuses
                raise UpstreamError("cannot reach upstream %s: %s" % (self.url, exc))
        raise UpstreamError("unreachable")

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def proxy_error_body(provider, status, message):
    """A JSON error in the provider's own shape, so SDKs raise their usual exceptions."""
    if provider == "anthropic":
        kind = "timeout_error" if status == 504 else "api_error"
        return {"type": "error", "error": {"type": kind, "message": "Token Spy: " + message}}
    code = "upstream_timeout" if status == 504 else "upstream_unreachable"
    return {"error": {"message": "Token Spy: " + message, "type": "proxy_error", "param": None, "code": code}}


# ---------------------------------------------------------------------------
# Shared settings: one JSON file for every instance, written atomically under a lock
# ---------------------------------------------------------------------------

# The settings that /api/settings accepts: the one place their rules live.
# kind: int | float | "url"; per_agent: may be overridden per agent (null = inherit);
# a setting whose default is None may also be null globally (meaning "none").
Setting = namedtuple("Setting", "kind lo hi default per_agent help")
SETTING_RULES = {
    "session_char_limit": Setting(int, 10000, 100000000, 200000, True,
                                  "history characters at which a session is reset"),
    "poll_interval_minutes": Setting(int, 1, 60, 5, True, "how often the session manager runs"),
    "hourly_budget_usd": Setting(float, 0, 1000000, None, True, "spend per UTC clock hour; null = no budget"),
    "daily_budget_usd": Setting(float, 0, 1000000, None, True, "spend per UTC day; null = no budget"),
    "budget_webhook_url": Setting("url", None, None, None, False,
                                  "http(s) URL POSTed once when a budget is crossed in its window"),
}
AGENT_SETTINGS = tuple(k for k, rule in SETTING_RULES.items() if rule.per_agent)
# Earlier implementation's environment names, used as defaults when the file has no value.
SETTING_ENV = {"session_char_limit": "SESSION_CHAR_LIMIT", "poll_interval_minutes": "POLL_INTERVAL_MINUTES"}


def _setting_ok(rule, value):
    """Is a stored value valid for its rule (None aside)?"""
    if rule.kind == "url":
        return isinstance(value, str) and urlsplit(value).scheme in ("http", "https") and bool(urlsplit(value).netloc)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (rule.kind is int and not isinstance(value, int)):
        return False
    return rule.lo <= value <= rule.hi


try:
    import fcntl
except ImportError:  # not on Windows; there the lock is only per process
    fcntl = None


class SettingsFile:
    """settings.json shared by every Token Spy instance on the host.

    Reads are cached on the file's (mtime, size) so a change made by any instance is seen
    at the next read. Updates hold an exclusive lock on settings.json.lock, re-read the
    file, validate the whole patch first, then write a temp file, fsync and rename: two
    instances posting at once never lose an update and a reader never sees half a file.
    """

    def __init__(self, path, environ=None):
        self.path = path
        self._cache = (None, None)
        self._lock = threading.Lock()
        environ = os.environ if environ is None else environ
        self.defaults = {key: rule.default for key, rule in SETTING_RULES.items()}
        for key, name in SETTING_ENV.items():
            try:
                value = int(environ.get(name) or "x")
            except ValueError:
                continue
            if _setting_ok(SETTING_RULES[key], value):
                self.defaults[key] = value

    def _read_file(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache[0] == stamp:
            return self._cache[1]
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            log.error("settings file %s is unreadable (%s); using defaults until it is fixed", self.path, exc)
            return {}
        self._cache = (stamp, data)
        return data

    def read(self):
        """The stored settings with every global key present."""
        data = self._read_file()
        out = {key: data[key] if _setting_ok(rule, data.get(key)) else self.defaults[key]
               for key, rule in SETTING_RULES.items()}
        agents = data.get("agents") if isinstance(data.get("agents"), dict) else {}
        out["agents"] = {}
        for name, overrides in agents.items():
            overrides = overrides if isinstance(overrides, dict) else {}
            out["agents"][name] = {key: overrides.get(key) if _setting_ok(SETTING_RULES[key], overrides.get(key))
                                   else None for key in AGENT_SETTINGS}
        for key, value in data.items():          # keys added by later versions survive a round trip
            if key not in out:
                out[key] = value
        return out

    def effective(self, agent, key):
        settings = self.read()
        value = settings["agents"].get(agent, {}).get(key)
        return value if value is not None else settings[key]

    @staticmethod
    def validate(patch):
        """Check a POST body; -> cleaned patch. Raises ApiError naming the field."""
        if not isinstance(patch, dict):
            raise ApiError(400, "settings must be a JSON object")
        clean = {}
        for key, value in patch.items():
            if key == "agents":
                if not isinstance(value, dict):
                    raise ApiError(400, "agents must be an object of agent name -> overrides")
                clean["agents"] = {}
                for name, overrides in value.items():
                    if not AGENT_NAME_RE.match(name):
                        raise ApiError(400, "agents: %r is not a valid agent name" % name)
                    if overrides is None:
                        clean["agents"][name] = None          # forget the agent's overrides
                        continue
                    if not isinstance(overrides, dict):
                        raise ApiError(400, "agents.%s must be an object" % name)
                    clean["agents"][name] = {}
                    for k, v in overrides.items():
                        clean["agents"][name][k] = SettingsFile._check("agents.%s.%s" % (name, k), k, v, True)
            else:
                clean[key] = SettingsFile._check(key, key, value, False)
        return clean

    @staticmethod
    def _check(field, key, value, per_agent):
        known = AGENT_SETTINGS if per_agent else tuple(SETTING_RULES)
        if key not in known:
            raise ApiError(400, "%s: unknown setting (known%s: %s)" % (
                field, " per agent" if per_agent else "", ", ".join(sorted(known))))
        rule = SETTING_RULES[key]
        if value is None:
            if per_agent or rule.default is None:
                return None
            raise ApiError(400, "%s: a global setting cannot be null" % field)
        if _setting_ok(rule, value):
            return value
        if rule.kind == "url":
            raise ApiError(400, "%s must be an http(s) URL or null, got %s" % (field, json.dumps(value)))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                rule.kind is int and not isinstance(value, int)):
            raise ApiError(400, "%s must be %s, got %s" % (
                field, "an integer" if rule.kind is int else "a number", json.dumps(value)))
        raise ApiError(400, "%s must be between %s and %s, got %s" % (field, rule.lo, rule.hi, value))

    def update(self, patch):
        """Apply a validated patch atomically; -> (new settings, old settings)."""
        lock_path = self.path + ".lock"
        with self._lock:
            with open(lock_path, "a") as lock:
                if fcntl:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    self._cache = (None, None)
                    old = self.read()
                    stored = self._read_file()
                    new = dict(stored)
                    for key in SETTING_RULES:
                        new[key] = old[key]
                    agents = {k: dict(v) for k, v in old["agents"].items()}
                    for key, value in patch.items():
                        if key != "agents":
                            new[key] = value
                    for name, overrides in patch.get("agents", {}).items():
                        if overrides is None:
                            agents.pop(name, None)
                        else:
                            agents.setdefault(name, dict.fromkeys(AGENT_SETTINGS))
                            agents[name].update(overrides)
                    new["agents"] = agents
                    self._write(new)
                    return self.read(), old
                finally:
                    if fcntl:
                        fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, data):
        folder = os.path.dirname(os.path.abspath(self.path))
        tmp = os.path.join(folder, ".%s.%d.%d.tmp" % (os.path.basename(self.path), os.getpid(), threading.get_ident()))
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._cache = (None, None)
        try:
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


TIMER_DROPIN_TEXT = ("# Written by Token Spy when poll_interval_minutes changes (POST /api/settings).\n"
                     "[Timer]\nOnUnitActiveSec=\nOnUnitActiveSec=%dmin\n")


def update_timer(minutes, dropin_path, unit, runner=None):
    """Point the session manager's timer at a new interval: drop-in, daemon-reload, restart.

    -> {"updated": bool, "reason"?: str, "dropin": path}. Never raises, never writes an
    invalid unit (minutes is validated before this is called).
    """
    import shutil
    import subprocess
    result = {"updated": False, "dropin": dropin_path, "unit": unit, "interval_minutes": minutes}
    if not isinstance(minutes, int) or not 1 <= minutes <= 60:
        result["reason"] = "invalid interval %r" % (minutes,)
        return result
    systemctl = shutil.which("systemctl")
    if not systemctl:
        result["reason"] = "systemctl not found: no systemd here; run session-manager.sh from cron instead"
        return result
    try:
        os.makedirs(os.path.dirname(dropin_path), exist_ok=True)
        tmp = dropin_path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(TIMER_DROPIN_TEXT % minutes)
        os.replace(tmp, dropin_path)
    except OSError as exc:
        result["reason"] = "cannot write %s (%s); run Token Spy with write access there or edit the timer by hand" % (
            dropin_path, exc.strerror or exc)
        return result
    run = runner or (lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=30))
    for argv in ([systemctl, "daemon-reload"], [systemctl, "restart", unit]):
        try:
            proc = run(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            result["reason"] = "%s failed: %s" % (" ".join(argv[1:]), exc)
            return result
        if proc.returncode != 0:
            result["reason"] = "systemctl %s failed (exit %d): %s" % (
                " ".join(argv[1:]), proc.returncode, (proc.stderr or proc.stdout or "").strip()[:300])
            return result
    result["updated"] = True
    return result


# ---------------------------------------------------------------------------
# Sessions: status from the log, session files, resets by archiving
# ---------------------------------------------------------------------------

CHARS_PER_TOKEN = 4
STATUS_WINDOW_DAYS = 7           # how far back session status looks
ACTIVE_MINUTES = 15              # a session file written this recently counts as active
SIDE_CALL_LOOKAHEAD = 3          # turns within which a long conversation must resume
TOOL_LOOP_RESULTS = 480          # file-based status: this many tool results is a loop
AUTO_RESET_COOLDOWN = 60.0       # seconds between two automatic resets of one agent
# Resets that end the agent's current session. The manager's 'inactive' and 'count-limit'
# archives tidy up other, idle sessions and leave the current one alone.
SESSION_ENDING_RESETS = ("auto", "manual", "session-manager")


def recommendation(history, limit):
    """The guide's scale, one for every path: healthy < L <= monitor, > 2L, > 2.5L."""
    if history is None:
        return "no_data"
    if history > 2.5 * limit:
        return "reset_recommended"
    if history > 2 * limit:
        return "compact_soon"
    if history >= limit:
        return "monitor"
    return "healthy"


def _segments(rows):
    """Split one conversation stream (oldest first, history known) at sharp drops.

    -> [(start, end, main indices)]. A drop below half of the conversation so far starts
    a new segment unless it is a side call (title generation, a sub-agent, a quota
    check): the conversation resumes at its old size within SIDE_CALL_LOOKAHEAD turns,
    or the drop is one of the newest turns and a one- or two-message request.
    """
    segments, start, ref, main = [], 0, None, []
    for i, row in enumerate(rows):
        h = row["conversation_history_chars"]
        if ref is None or ref <= 1000 or h >= 0.5 * ref:
            ref = h
            main.append(i)
            continue
        ahead = rows[i + 1:i + 1 + SIDE_CALL_LOOKAHEAD]
        if any(r["conversation_history_chars"] >= 0.9 * ref for r in ahead):
            continue                                  # the conversation resumed: a side call
        if len(ahead) < SIDE_CALL_LOOKAHEAD and (row.get("message_count") or 0) <= 2 and not any(
                r["conversation_history_chars"] < 0.5 * ref and (r.get("message_count") or 0) > 2 for r in ahead):
            continue                                  # too new to tell, and shaped like a side call
        segments.append((start, i, main))
        start, ref, main = i, h, [i]
    segments.append((start, len(rows), main))
    return segments


def current_session(rows, reset_at=None):
    """Split an agent's turns (oldest first) -> (session turns, main turns).

    Boundaries, strongest first: a reset by Token Spy (turns that started before it are
    not part of the new session); the client's own session id (Claude Code, Codex send
    one); a sharp drop in history that is not a side call (see _segments).
    """
    if reset_at:
        rows = [r for r in rows if r["timestamp"] > reset_at]
    rows = [r for r in rows if r.get("conversation_history_chars") is not None]
    if not rows:
        return [], []
    sid = rows[-1].get("client_session_id")
    if sid:
        rows = [r for r in rows if r.get("client_session_id") == sid]
    start, end, main = _segments(rows)[-1]
    return rows[start:end], [rows[i] for i in main]


def split_sessions(rows, resets):
    """Every session in an agent's turns (oldest first) -> list of session dicts.

    The same boundaries as current_session: resets (SESSION_ENDING_RESETS) cut the
    timeline; inside, turns group by client session id, then split at history drops.
    `ended_by` is the reset's reason, 'fresh_start' (the agent began another session),
    or 'active' for the newest session still open.
    """
    resets = sorted((r for r in resets if r["reason"] in SESSION_ENDING_RESETS), key=lambda r: r["timestamp"])
    stamps = [r["timestamp"] for r in resets]
    groups = {}
    for row in rows:
        if row.get("conversation_history_chars") is None:
            continue
        epoch = bisect.bisect_left(stamps, row["timestamp"])
        groups.setdefault((epoch, row.get("client_session_id")), []).append(row)
    sessions = []
    for (epoch, sid), group in groups.items():
        segments = _segments(group)
        for k, (a, b, _main) in enumerate(segments):
            turns = group[a:b]
            costs = [t["estimated_cost_usd"] for t in turns if t["estimated_cost_usd"] is not None]
            sessions.append({
                "client_session_id": sid, "started": turns[0]["timestamp"], "last_turn": turns[-1]["timestamp"],
                "turns": len(turns), "peak_history_chars": max(t["conversation_history_chars"] for t in turns),
                "cost_usd": _r(sum(costs)) if costs else None,
                "duration_s": round((turns[-1]["ts"] - turns[0]["ts"]) / 1000.0, 3),
                "failed_turns": sum(1 for t in turns if (t["status"] or 0) >= 400 or t["error"]),
                "ended_by": "fresh_start" if k < len(segments) - 1 else None, "_epoch": epoch,
            })
    sessions.sort(key=lambda x: x["started"])
    open_by_epoch = {}
    for sess in sessions:
        if sess["ended_by"] is None:
            open_by_epoch.setdefault(sess["_epoch"], []).append(sess)
    for epoch, open_sessions in open_by_epoch.items():
        newest = max(open_sessions, key=lambda x: x["last_turn"])
        for sess in open_sessions:
            if sess is not newest:
                sess["ended_by"] = "fresh_start"
            elif epoch < len(resets):
                sess["ended_by"] = resets[epoch]["reason"]
                sess["reset_at"] = resets[epoch]["timestamp"]
            else:
                sess["ended_by"] = "active"
    for sess in sessions:
        del sess["_epoch"]
    return sessions


def _r(value, digits=6):
    """Round floats for JSON; anything else as it is."""
    return round(value, digits) if isinstance(value, float) else value


class Sessions:
    """Session status, session files and resets for every agent this instance knows."""

    def __init__(self, app):
        self.app = app
        self._last_auto = {}
        self._lock = threading.Lock()

    @property
    def dirs(self):
        return self.app.config.agent_session_dirs

    def known_agents(self):
        names = set(self.app.store.agents()) | set(self.dirs) | {self.app.config.agent}
        names |= set(self.app.settings.read()["agents"])
        return sorted(names)

    def limit(self, agent):
        return self.app.settings.effective(agent, "session_char_limit")

    # -- status -----------------------------------------------------------------------

    def status(self, agent):
        store = self.app.store
        limit = self.limit(agent)
        last = store.last_reset(agent, SESSION_ENDING_RESETS)
        rows = store.agent_turns(agent, time.time() - STATUS_WINDOW_DAYS * 86400)
        out = {"agent": agent, "session_char_limit": limit, "can_reset": agent in self.dirs,
               "session_char_limit_tokens": limit // CHARS_PER_TOKEN,
               "last_reset": ({k: last[k] for k in ("timestamp", "reason", "detail", "session_id", "archived_to")}
                              if last else None)}
        if agent in self.app.config.local_model_agents:
            out["is_local_model"] = True
        session, main = current_session(rows, last["timestamp"] if last else None)
        since_reset = [r for r in rows if not last or r["timestamp"] > last["timestamp"]]
        if not session:
            file_status = self.file_status(agent) if agent in self.dirs and not rows else None
            if file_status:
                out.update(file_status)
                out.update(recommendation=self._file_recommendation(file_status, limit), source="session_files")
                return out
            out.update(current_session_turns=0, current_history_chars=0, current_history_tokens=0,
                       last_turn_cost=None, avg_cost_last_5=None, cache_write_pct_last_5=None,
                       cost_since_last_reset=_r(self._sum_cost(since_reset)),
                       turns_since_last_reset=len(since_reset), recommendation="no_data", source="log",
                       session_started=None, client_session_id=None)
            return out
        history = main[-1]["conversation_history_chars"] if main else session[-1]["conversation_history_chars"]
        last5 = session[-5:]
        costs = [r["estimated_cost_usd"] for r in last5 if r["estimated_cost_usd"] is not None]
        reads = sum(r["cache_read_tokens"] or 0 for r in last5)
        writes = sum(r["cache_write_tokens"] or 0 for r in last5)
        out.update(
            current_session_turns=len(session),
            current_history_chars=history,
            current_history_tokens=history // CHARS_PER_TOKEN,
            last_turn_cost=session[-1]["estimated_cost_usd"],
            avg_cost_last_5=_r(sum(costs) / len(costs)) if costs else None,
            cache_write_pct_last_5=round(writes / (reads + writes), 4) if reads + writes else None,
            session_cost=_r(self._sum_cost(session)),
            cost_since_last_reset=_r(self._sum_cost(since_reset)),
            turns_since_last_reset=len(since_reset),
            recommendation=recommendation(history, limit),
            session_started=session[0]["timestamp"],
            last_turn_at=session[-1]["timestamp"],
            client_session_id=session[-1].get("client_session_id"),
            source="log",
        )
        return out

    @staticmethod
    def _sum_cost(rows):
        costs = [r["estimated_cost_usd"] for r in rows if r["estimated_cost_usd"] is not None]
        return sum(costs) if costs else (0.0 if rows else None)

    @staticmethod
    def _file_recommendation(fs, limit):
        if fs.get("tool_results", 0) >= TOOL_LOOP_RESULTS:
            return "reset_recommended"
        return recommendation(fs.get("current_history_chars"), limit)

    # -- session files ----------------------------------------------------------------

    def session_files(self, agent):
        """[{session_id, path, size_bytes, mtime, listed}] of *.jsonl in the agent's dir."""
        folder = self.dirs.get(agent)
        if not folder or not os.path.isdir(folder):
            return []
        listed = self._listed_ids(folder)
        out = []
        for entry in os.scandir(folder):
            if not entry.name.endswith(".jsonl") or not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
            sid = entry.name[:-len(".jsonl")]
            out.append({"session_id": sid, "path": entry.path, "size_bytes": st.st_size,
                        "mtime": st.st_mtime, "listed": sid in listed})
        return out

    @staticmethod
    def _listed_ids(folder):
        try:
            with open(os.path.join(folder, "sessions.json"), encoding="utf-8") as fh:
                index = json.load(fh)
        except (OSError, ValueError):
            return set()
        if not isinstance(index, dict):
            return set()
        return {v.get("sessionId") for v in index.values() if isinstance(v, dict) and v.get("sessionId")}

    def active_files(self, agent, now=None):
        now = now or time.time()
        return [f for f in self.session_files(agent) if f["listed"] or now - f["mtime"] < ACTIVE_MINUTES * 60]

    def file_status(self, agent):
        """Status read from the newest active session file (agents not proxied here)."""
        files = sorted(self.active_files(agent), key=lambda f: f["mtime"])
        if not files:
            return None
        f = files[-1]
        users = assistants = tools = lines = 0
        history = []
        try:
            with open(f["path"], encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    lines += 1
                    try:
                        item = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(item, dict) or item.get("type") != "message":
                        continue
                    msg = item.get("message")
                    if isinstance(msg, str):
                        try:
                            msg = json.loads(msg)
                        except ValueError:
                            continue
                    if not isinstance(msg, dict):
                        continue
                    role = msg.get("role")
                    users += role == "user"
                    assistants += role == "assistant"
                    tools += role in ("toolResult", "tool") or "tool_call_id" in msg
                    history.append(msg)
        except OSError:
            return None
        chars = _json_chars(history) if history else 0
        return {"current_session_turns": users or assistants, "current_history_chars": chars,
                "current_history_tokens": chars // CHARS_PER_TOKEN, "tool_results": tools,
                "file_bytes": f["size_bytes"], "total_lines": lines, "session_files": len(self.session_files(agent)),
                "session_id": f["session_id"], "last_turn_cost": None, "avg_cost_last_5": None,
                "cache_write_pct_last_5": None, "cost_since_last_reset": None, "turns_since_last_reset": None}

    # -- resets -----------------------------------------------------------------------

    def reset(self, agent, reason, detail=None, history=None, session_id=None):
        """Archive the agent's largest active session file (or the given one) and unlist it.

        -> {"agent", "action": "archived"|"none", ...}. Never deletes; never touches
        anything outside the agent's configured sessions dir; at most once per session
        across every process sharing the database.
        """
        folder = self.dirs.get(agent)
        result = {"agent": agent, "action": "none"}
        if not folder:
            result["reason"] = "no sessions dir configured for %s" % agent
            return result
        if not os.path.isdir(folder):
            result["reason"] = "sessions dir %s does not exist" % folder
            return result
        candidates = self.active_files(agent)
        if session_id:
            candidates = [f for f in self.session_files(agent) if f["session_id"] == session_id]
        if not candidates:
            result["reason"] = "no active session file in %s" % folder
            return result
        target = max(candidates, key=lambda f: (f["size_bytes"], f["mtime"]))
        real_dir = os.path.realpath(folder)
        path = target["path"]
        if os.path.islink(path) or os.path.dirname(os.path.realpath(path)) != real_dir:
            result["reason"] = "refusing %s: not a plain file inside %s" % (path, folder)
            return result
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        archived = "%s.reset.%s" % (path, stamp)
        claim = {"timestamp": tokenspy_db.iso_utc(time.time()), "agent": agent, "session_id": target["session_id"],
                 "reason": reason, "detail": detail, "file": path, "archived_to": archived,
                 "size_bytes": target["size_bytes"], "history_chars": history}
        if not self.app.store.claim_reset(claim):
            result["reason"] = "session %s was already reset" % target["session_id"]
            result["session_id"] = target["session_id"]
            return result
        try:
            os.rename(path, archived)
        except OSError as exc:
            self.app.store.unclaim_reset(agent, target["session_id"])
            result["reason"] = "cannot archive %s: %s" % (path, exc.strerror or exc)
            return result
        unlisted = self._unlist(folder, target["session_id"])
        log.warning("reset %s session %s (%s): archived %d bytes to %s%s", agent, target["session_id"], reason,
                    target["size_bytes"], archived, "" if unlisted is None else ", sessions.json updated")
        result.update(action="archived", session_id=target["session_id"], size_bytes=target["size_bytes"],
                      file=path, archived_to=archived, reason=reason, detail=detail,
                      sessions_json_updated=bool(unlisted))
        return result

    @staticmethod
    def _unlist(folder, session_id):
        """Drop the session from sessions.json (atomic rewrite). -> keys removed, or None."""
        index_path = os.path.join(folder, "sessions.json")
        try:
            with open(index_path, encoding="utf-8") as fh:
                index = json.load(fh)
        except (OSError, ValueError):
            return None
        if not isinstance(index, dict):
            return None
        keys = [k for k, v in index.items() if isinstance(v, dict) and v.get("sessionId") == session_id]
        if not keys:
            return []
        for k in keys:
            del index[k]
        tmp = "%s.tokenspy.%d.tmp" % (index_path, os.getpid())
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(index, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, index_path)
        except OSError as exc:
            log.error("could not update %s: %s", index_path, exc)
            return None
        return keys

    def after_log(self, rows):
        """Recorder hook: reset an agent whose logged history went over its limit."""
        for row in rows:
            agent, history = row.get("agent"), row.get("conversation_history_chars")
            if history is None or agent not in self.dirs or (row.get("status") or 0) >= 400:
                continue
            limit = self.limit(agent)
            if history < limit:
                continue
            last = self.app.store.last_reset(agent, SESSION_ENDING_RESETS)
            if last and row["timestamp"] <= last["timestamp"]:
                continue                   # the turn started before the last reset
            with self._lock:
                if time.time() - self._last_auto.get(agent, 0) < AUTO_RESET_COOLDOWN:
                    continue
                self._last_auto[agent] = time.time()
            self.reset(agent, "auto", detail="history %d chars >= limit %d" % (history, limit), history=history)

    # -- session manager --------------------------------------------------------------

    def manage(self, agents=None, inactive_minutes=60, max_sessions=5, retention_days=7, dry_run=False):
        """One pass of the session manager over each agent with a sessions dir. -> report."""
        report = []
        now = time.time()
        for agent in sorted(agents or self.dirs):
            entry = {"agent": agent, "actions": []}
            report.append(entry)
            if agent not in self.dirs:
                entry["error"] = "no sessions dir configured"
                continue
            status = self.status(agent)
            entry["recommendation"] = status["recommendation"]
            entry["history_chars"] = status.get("current_history_chars")
            if status["recommendation"] == "reset_recommended":
                entry["actions"].append({"reset": "dry-run"} if dry_run else self.reset(
                    agent, "session-manager", detail="status reset_recommended at %s chars (limit %s)" % (
                        status.get("current_history_chars"), status["session_char_limit"]),
                    history=status.get("current_history_chars")))
            gone = set()
            for f in self.session_files(agent):
                if not f["listed"] and now - f["mtime"] > inactive_minutes * 60:
                    entry["actions"].append(self._archive(agent, f, "inactive", dry_run))
                    gone.add(f["session_id"])
            live = sorted((f for f in self.session_files(agent) if f["session_id"] not in gone),
                          key=lambda f: f["mtime"], reverse=True)
            for f in live[max_sessions:]:
                if now - f["mtime"] < ACTIVE_MINUTES * 60:
                    continue
                entry["actions"].append(self._archive(agent, f, "count-limit", dry_run))
            entry["actions"].extend(self._purge(agent, now - retention_days * 86400, dry_run))
        return report

    def _archive(self, agent, f, reason, dry_run):
        if dry_run:
            return {"archive": f["session_id"], "reason": reason, "dry_run": True}
        return self.reset(agent, reason, detail="%s, %d bytes" % (reason, f["size_bytes"]), session_id=f["session_id"])

    @staticmethod
    def _archived_at(entry):
        """When a file was archived: the stamp in its name, else its mtime."""
        stamp = entry.name.rsplit(".", 1)[-1]
        try:
            return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return entry.stat(follow_symlinks=False).st_mtime

    _ARCHIVE_RE = re.compile(r"\.jsonl\.(reset|deleted)\.[0-9TZ:.-]+$")

    def _purge(self, agent, cutoff, dry_run):
        folder = self.dirs[agent]
        out = []
        for entry in os.scandir(folder):
            if not self._ARCHIVE_RE.search(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            if self._archived_at(entry) >= cutoff:
                continue
            if not dry_run:
                try:
                    os.remove(entry.path)
                except OSError as exc:
                    out.append({"purge": entry.name, "error": str(exc)})
                    continue
            out.append({"purge": entry.name, "dry_run": dry_run})
        return out


# ---------------------------------------------------------------------------
# Budgets: spend per UTC hour and day against the settings; informational only
# ---------------------------------------------------------------------------

BUDGET_WARNING = 0.8                       # share of a budget at which the state is 'warning'
BUDGET_PERIODS = (("hour", "hourly_budget_usd"), ("day", "daily_budget_usd"))


def budget_state(spend, budget):
    """'none' (no budget), 'ok', 'warning' (>= 80 %) or 'over' (>= 100 %)."""
    if budget is None:
        return "none"
    if budget <= 0:
        return "over" if spend > 0 else "ok"
    share = spend / budget
    return "over" if share >= 1 else "warning" if share >= BUDGET_WARNING else "ok"


class Budgets:
    """Spend against hourly and daily budgets. Never blocks traffic: it reports, and calls
    the webhook (budget_webhook_url) once per budget crossed in a window, from a thread of
    its own, across every process sharing the database (the alerts table)."""

    def __init__(self, app):
        self.app = app

    @staticmethod
    def window(period, now):
        t = time.gmtime(now)
        if period == "hour":
            start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, 0, 0))
            return start, start + 3600
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return start, start + 86400

    def status(self, now=None, alerts=True):
        now = now or time.time()
        settings = self.app.settings.read()
        agents = set(self.app.sessions.known_agents())
        out = {"warning_at": BUDGET_WARNING, "webhook_configured": bool(settings["budget_webhook_url"]),
               "periods": {}}
        if alerts:
            out["alerts"] = [dict(a, payload=json.loads(a["payload"]))
                             for a in self.app.store.alerts(now - 86400 * 7, limit=20)]
        for period, key in BUDGET_PERIODS:
            start, end = self.window(period, now)
            spend = self.app.store.spend(start)
            entry = {"window_start": tokenspy_db.iso_utc(start), "window_end": tokenspy_db.iso_utc(end),
                     "global": self._line(spend[None], settings[key]), "agents": {}}
            for agent in sorted(agents | {a for a in spend if a is not None}):
                override = settings["agents"].get(agent, {}).get(key)
                budget = override if override is not None else settings[key]
                entry["agents"][agent] = dict(self._line(spend.get(agent, 0.0), budget), inherited=override is None)
            out["periods"][period] = entry
        return out

    @staticmethod
    def _line(spend, budget):
        return {"budget_usd": budget, "spend_usd": round(spend, 6),
                "pct": round(100 * spend / budget, 2) if budget else None, "state": budget_state(spend, budget)}

    def after_log(self, rows):
        """Recorder hook: raise an alert for each budget newly crossed in its window."""
        settings = self.app.settings.read()
        configured = any(settings[key] is not None or any(
            (a or {}).get(key) is not None for a in settings["agents"].values()) for _, key in BUDGET_PERIODS)
        if not configured:
            return
        status = self.status(alerts=False)
        for period, entry in status["periods"].items():
            scopes = [("global", None, entry["global"])] + [("agent", a, v) for a, v in entry["agents"].items()]
            for scope, agent, line in scopes:
                if line["state"] != "over":
                    continue
                key = "%s/%s/%s/%s" % (period, scope, agent or "*", entry["window_start"])
                payload = {"event": "budget_exceeded", "scope": scope, "agent": agent, "period": period,
                           "window_start": entry["window_start"], "window_end": entry["window_end"],
                           "budget_usd": line["budget_usd"], "spend_usd": line["spend_usd"], "pct": line["pct"],
                           "source": "Token Spy %s" % __version__}
                if self.app.store.claim_alert(key, payload):
                    log.warning("budget exceeded: %s %s spend $%.4f of $%s", period, agent or "all agents",
                                line["spend_usd"], line["budget_usd"])
                    url = settings["budget_webhook_url"]
                    if url:
                        threading.Thread(target=self._post, args=(url, key, payload), daemon=True,
                                         name="tokenspy-webhook").start()
                    else:
                        self.app.store.mark_alert(key, None, "no webhook configured")

    def _post(self, url, key, payload):
        import urllib.request
        try:
            req = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "TokenSpy/" + __version__})
            with urllib.request.urlopen(req, timeout=5) as resp:
                self.app.store.mark_alert(key, 1, "HTTP %d" % resp.status)
        except Exception as exc:
            log.warning("budget webhook %s failed: %s", url, exc)
            try:
                self.app.store.mark_alert(key, 0, str(exc)[:300])
            except Exception:
                pass


# ---------------------------------------------------------------------------
# JSON API
# ---------------------------------------------------------------------------

class ApiError(Exception):
    """Raised anywhere in an API handler; rendered as {"error": ..., "status": ...}."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = int(status)
        self.message = message


def _number(query, name, default, lo, hi, kind=float):
    raw = query.get(name, [None])[-1]
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ApiError(400, "%s must be a number, got %r" % (name, raw))
    if value != value or not lo <= value <= hi:
        raise ApiError(400, "%s must be between %s and %s" % (name, lo, hi))
    return value


def _agent_param(query, required=False, default=None):
    agent = query.get("agent", [None])[-1]
    if not agent:
        if required:
            raise ApiError(400, "agent is required, e.g. ?agent=my-agent")
        return default
    if not AGENT_NAME_RE.match(agent):
        raise ApiError(400, "agent %r is not a valid agent name" % agent)
    return agent


def api_health(app, query, body):
    return {"status": "ok", "agent": app.config.agent, "uptime_seconds": int(time.time() - app.started),
            "session_char_limit": app.settings.effective(app.config.agent, "session_char_limit"),
            "version": __version__, "db_writable": app.store.writable(),
            "pending_rows": app.recorder.backlog}


def api_usage(app, query, body):
    hours = _number(query, "hours", 24.0, 0, 24 * 366 * 10)
    limit = _number(query, "limit", 100, 1, 10000, int)
    return app.store.usage(hours=hours, limit=limit, agent=_agent_param(query))


def api_summary(app, query, body):
    hours = _number(query, "hours", 24.0, 0, 24 * 366 * 10)
    rows = app.store.summary(hours=hours)
    for row in rows:
        if row["agent"] in app.config.local_model_agents:
            row["is_local_model"] = True
    return rows


def settings_view(app, settings=None):
    """The settings object, each agent with its effective (inherited) values."""
    settings = settings or app.settings.read()
    agents = dict(settings["agents"])
    for name in set(app.config.agent_session_dirs) | {app.config.agent}:
        agents.setdefault(name, dict.fromkeys(AGENT_SETTINGS))
    view = dict(settings)
    view["agents"] = {}
    for name in sorted(agents):
        entry = dict(agents[name])
        for key in AGENT_SETTINGS:
            value = entry.get(key)
            entry["_effective_" + key] = value if value is not None else settings[key]
        view["agents"][name] = entry
    return view


def api_settings(app, query, body):
    return settings_view(app)


def api_settings_post(app, query, body):
    patch = SettingsFile.validate(_json_body(body))
    new, old = app.settings.update(patch)
    log.info("settings updated: %s", json.dumps(patch)[:500].encode("unicode_escape").decode("ascii"))
    view = settings_view(app, new)
    if "poll_interval_minutes" in patch and new["poll_interval_minutes"] != old["poll_interval_minutes"]:
        view["timer"] = update_timer(new["poll_interval_minutes"], app.config.timer_dropin, app.config.timer_unit)
    return view


def _json_body(body):
    if not body:
        raise ApiError(400, "send a JSON object with Content-Type: application/json")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ApiError(400, "invalid JSON: %s" % exc)


def _known_agent(app, query):
    agent = _agent_param(query, default=app.config.agent)
    if agent not in app.sessions.known_agents():
        raise ApiError(404, "unknown agent %r: it has no turns, settings or sessions dir" % agent)
    return agent


def api_session_status(app, query, body):
    return app.sessions.status(_known_agent(app, query))


def api_reset_session(app, query, body):
    agent = _agent_param(query, required=True)
    if agent not in app.config.agent_session_dirs:
        raise ApiError(400, "session reset is not configured for agent %r: give it a sessions dir with "
                            "--sessions-dir or AGENT_SESSION_DIRS" % agent)
    return app.sessions.reset(agent, "manual", detail="POST /api/reset-session")


BUCKET_WIDTHS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_HOURS = 24 * 366 * 10


def _window(app, query, max_buckets=120):
    """(since epoch s, hours, bucket width s) for ?hours= (default 24; 'all' or 0 = everything)."""
    raw = query.get("hours", [""])[-1]
    hours = 0.0 if raw in ("all", "0") else _number(query, "hours", 24.0, 0.01, MAX_HOURS)
    now = time.time()
    if not hours:
        first = app.store.first_ts(_agent_param(query))
        since = first / 1000.0 if first is not None else now - 3600
        hours = max((now - since) / 3600.0, 1.0)
    since = now - hours * 3600
    span = now - since
    width = next((w for w in BUCKET_WIDTHS if span / w <= max_buckets), BUCKET_WIDTHS[-1])
    return since, hours, width


TOTAL_FIELDS = ("turns", "cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "cost_input_usd", "cost_output_usd", "cost_cache_read_usd", "cost_cache_write_usd",
                "cache_savings_usd", "failed_turns", "unpriced_turns", "turns_without_usage", "max_history_chars")


def _bucket_starts(since, width):
    """Bucket start times (epoch s) from `since` to now, and epoch ms -> position."""
    starts = list(range(int(since // width) * width, int(time.time()) + 1, width))
    return starts, {t * 1000: i for i, t in enumerate(starts)}


def _totals_view(t):
    """tokenspy_db aggregates -> the overview's totals (derived shares and averages)."""
    out = {k: _r(t.get(k), 8) for k in TOTAL_FIELDS}
    prompt = sum(out.get(k) or 0 for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens"))
    out["prompt_tokens"] = prompt
    out["cache_efficiency"] = round((out.get("cache_read_tokens") or 0) / prompt, 4) if prompt else None
    out["cost_per_turn"] = (round(out["cost_usd"] / t["priced_turns"], 8)
                            if out["cost_usd"] is not None and t.get("priced_turns") else None)
    out["avg_duration_ms"] = round(t["dur_sum"] / t["dur_n"], 1) if t.get("dur_n") else None
    return out


def api_overview(app, query, body):
    """Everything the dashboard's cards and charts need, bucketed by the server."""
    agent = _agent_param(query)
    since, hours, width = _window(app, query)
    groups = app.store.totals(since, agent, group_by="agent")
    totals = _totals_view(app.store.merge(groups)[0] if groups else app.store.totals(since, agent))
    per_agent = []
    for row in groups:
        per_agent.append(dict(_totals_view(row), agent=row["agent"],
                              is_local_model=row["agent"] in app.config.local_model_agents))
    starts, index = _bucket_starts(since, width)
    fields = ("turns", "cost_usd", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "max_history_chars", "failed_turns")
    series = {}
    for row in app.store.buckets(since, width, agent):
        i = index.get(row["t"])
        if i is None:
            continue
        cols = series.setdefault(row["agent"], {f: [None] * len(starts) for f in fields})
        for f in fields:
            cols[f][i] = round(row[f], 8) if isinstance(row[f], float) else row[f]
    return {"hours": round(hours, 4), "since": tokenspy_db.iso_utc(since), "until": tokenspy_db.iso_utc(time.time()),
            "agent": agent, "totals": totals, "agents": per_agent, "price_version": app.prices.version,
            "series": {"bucket_seconds": width, "buckets": [t * 1000 for t in starts], "agents": series}}


def api_agents(app, query, body):
    """Session status of every known agent (with turns, settings or a sessions dir)."""
    return [app.sessions.status(agent) for agent in app.sessions.known_agents()]


# -- roadmap analytics ---------------------------------------------------------------

# Stop reasons of every API -> the categories the stop-reason view groups them by.
STOP_CATEGORIES = {
    "end_turn": "natural", "stop": "natural", "completed": "natural",
    "tool_use": "tool_use", "tool_calls": "tool_use", "function_call": "tool_use",
    "max_tokens": "truncated", "length": "truncated", "max_output_tokens": "truncated",
    "model_context_window_exceeded": "truncated", "incomplete": "truncated", "max_messages": "truncated",
    "stop_sequence": "stop_sequence",
    "refusal": "refusal", "content_filter": "refusal",
    "pause_turn": "paused",
    "error": "error", "failed": "error", "cancelled": "error",
    "unknown": "unknown",
}
TRUNCATIONS = tuple(k for k, v in STOP_CATEGORIES.items() if v == "truncated")


def api_models(app, query, body):
    """Feature 1: per model side by side."""
    since, hours, _ = _window(app, query)
    rows = app.store.model_stats(since, _agent_param(query))
    out = []
    for row in rows:
        prompt = sum(row[k] or 0 for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens"))
        cost, priced = row["cost_usd"], row["priced_turns"]
        out.append({
            "model": row["model"], "provider": row["provider"], "turns": row["turns"],
            "cost_usd": _r(cost), "cost_per_turn": _r(cost / priced, 8) if cost is not None and priced else None,
            "avg_duration_ms": round(row["dur_sum"] / row["dur_n"], 1) if row["dur_n"] else None,
            "p95_duration_ms": row["p95_duration_ms"],
            "avg_ttfb_ms": round(row["ttfb_sum"] / row["ttfb_n"], 1) if row["ttfb_n"] else None,
            "avg_prompt_tokens": round(row["prompt_sum"] / row["prompt_n"], 1) if row["prompt_n"] else None,
            "output_tokens": row["output_tokens"],
            "cache_hit_share": round((row["cache_read_tokens"] or 0) / prompt, 4) if prompt else None,
            "output_tokens_per_dollar": round(row["priced_output_tokens"] / cost, 1)
            if cost and row["priced_output_tokens"] is not None else None,
            "failed_turns": row["failed_turns"], "unpriced_turns": row["unpriced_turns"],
        })
    return {"hours": round(hours, 4), "models": out}


def api_latency(app, query, body):
    """Feature 2: response time per model and agent, outliers, context size vs latency."""
    agent = _agent_param(query)
    since, hours, width = _window(app, query)
    pcts = app.store.percentiles_by(None, (50, 95), since, agent).get(None, {50: None, 95: None})
    starts, index = _bucket_starts(since, width)
    series = {}
    acc = {"model": {}, "agent": {}}
    for row in app.store.latency_buckets(since, width, agent):
        i = index.get(row["t"])
        if i is None:
            continue
        for column in ("model", "agent"):
            a = acc[column].setdefault((row[column] or "unknown", i), [0, 0, None])
            a[0] += row["turns"]
            a[1] += row["sum_ms"]
            a[2] = row["max_ms"] if a[2] is None else max(a[2], row["max_ms"])
    for column in ("model", "agent"):
        out = series[column] = {}
        for (k, i), (n, total, mx) in acc[column].items():
            cols = out.setdefault(k, {"avg_ms": [None] * len(starts), "max_ms": [None] * len(starts)})
            cols["avg_ms"][i] = _r(total / n, 1)
            cols["max_ms"][i] = mx
    agg, points = app.store.latency_points(since, agent)
    corr = None
    n = agg["n"] or 0
    if n >= 3:
        vx = n * agg["sxx"] - agg["sx"] ** 2
        vy = n * agg["syy"] - agg["sy"] ** 2
        if vx > 0 and vy > 0:
            corr = round((n * agg["sxy"] - agg["sx"] * agg["sy"]) / (vx * vy) ** 0.5, 4)
    threshold = pcts[95]
    outliers = app.store.slowest(since, threshold, agent) if threshold is not None else []
    return {"hours": round(hours, 4), "median_ms": pcts[50], "p95_ms": pcts[95], "outlier_threshold_ms": threshold,
            "bucket_seconds": width, "buckets": [t * 1000 for t in starts], "by_model": series["model"],
            "by_agent": series["agent"], "outliers": outliers,
            "scatter": {"x": "prompt_tokens", "y": "duration_ms", "points": [[p["x"], p["y"]] for p in points],
                        "turns": n, "correlation": corr}}


def api_stop_reasons(app, query, body):
    """Feature 5: why turns ended, per model, agent and over time; truncations called out."""
    agent = _agent_param(query)
    since, hours, width = _window(app, query)
    totals, by_model, by_agent = {}, {}, {}
    starts, index = _bucket_starts(since, width)
    series = {}
    for row in app.store.stop_reason_rows(since, width, agent):
        reason, n = row["reason"], row["turns"]
        i = index.get(row["t"])
        if i is not None:
            series.setdefault(STOP_CATEGORIES.get(reason, "other"), [0] * len(starts))[i] += n
        totals[reason] = totals.get(reason, 0) + n
        by_model.setdefault(row["model"] or "unknown", {}).setdefault(reason, 0)
        by_model[row["model"] or "unknown"][reason] += n
        by_agent.setdefault(row["agent"], {}).setdefault(reason, 0)
        by_agent[row["agent"]][reason] += n
    turns = sum(totals.values())
    truncated = sum(n for r, n in totals.items() if r in TRUNCATIONS)
    return {
        "hours": round(hours, 4), "turns": turns,
        "reasons": sorted(({"stop_reason": r, "category": STOP_CATEGORIES.get(r, "other"), "turns": n,
                            "share": round(n / turns, 4)} for r, n in totals.items()), key=lambda x: -x["turns"]),
        "by_model": by_model, "by_agent": by_agent, "categories": STOP_CATEGORIES,
        "bucket_seconds": width, "buckets": [t * 1000 for t in starts], "series": series,
        "truncations": {"turns": truncated, "share": round(truncated / turns, 4) if turns else None,
                        "recent": app.store.turns_with_stop(since, TRUNCATIONS, agent)},
    }


def api_tools(app, query, body):
    """Feature 6: each tool definition seen in requests, its size, and how often it was called."""
    since, hours, _ = _window(app, query)
    sets, calls = app.store.tool_usage(since, _agent_param(query))
    tools = {}
    for row in sets:
        for name, chars in json.loads(row["tools"]):
            t = tools.setdefault(name, {"name": name, "turns_carrying": 0, "chars_total": 0, "max_chars": 0})
            t["turns_carrying"] += row["turns"]
            t["chars_total"] += chars * row["turns"]
            t["max_chars"] = max(t["max_chars"], chars)
    for name in calls:
        tools.setdefault(name, {"name": name, "turns_carrying": 0, "chars_total": 0, "max_chars": 0})
    out = []
    for t in tools.values():
        carried = t.pop("turns_carrying")
        total = t.pop("chars_total")
        avg = total / carried if carried else 0
        called = calls.get(t["name"], 0)
        out.append(dict(t, turns_carrying=carried, avg_chars=round(avg, 1), avg_tokens=round(avg / CHARS_PER_TOKEN, 1),
                        tokens_sent=total // CHARS_PER_TOKEN, times_called=called,
                        call_rate=round(called / carried, 4) if carried else None,
                        dead_weight=carried > 0 and called == 0))
    out.sort(key=lambda t: (-t["tokens_sent"], t["name"]))
    dead = [t for t in out if t["dead_weight"]]
    return {"hours": round(hours, 4), "tools": out, "dead_weight": {
        "tools": len(dead), "tokens_sent": sum(t["tokens_sent"] for t in dead)}}


SESSION_HISTORY_MAX_TURNS = 200000      # the newest turns in the window; `truncated` says when cut


def api_session_history(app, query, body):
    """Feature 4: every past session of an agent, how it ended, and the patterns."""
    agent = _known_agent(app, query)
    since, hours, _ = _window(app, query)
    rows = app.store.session_turns(agent, since, limit=SESSION_HISTORY_MAX_TURNS)
    resets = app.store.resets(agent, since_ts=since)
    sessions = split_sessions(rows, resets)
    days = max(hours / 24.0, 1 / 24.0)
    ended = {}
    for sess in sessions:
        ended[sess["ended_by"]] = ended.get(sess["ended_by"], 0) + 1
    finished = [x for x in sessions if x["ended_by"] != "active"] or sessions
    costs = [x["cost_usd"] for x in finished if x["cost_usd"] is not None]
    by_reason = {}
    for r in resets:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    return {"agent": agent, "hours": round(hours, 4), "sessions": sessions, "resets": resets,
            "truncated": len(rows) >= SESSION_HISTORY_MAX_TURNS, "first_turn": rows[0]["timestamp"] if rows else None,
            "stats": {
        "sessions": len(sessions), "ended_by": ended, "resets": len(resets), "resets_by_reason": by_reason,
        "resets_per_day": round(len([r for r in resets if r["reason"] in SESSION_ENDING_RESETS]) / days, 3),
        "avg_turns": round(sum(x["turns"] for x in finished) / len(finished), 2) if finished else None,
        "avg_duration_s": round(sum(x["duration_s"] for x in finished) / len(finished), 1) if finished else None,
        "avg_cost_usd": _r(sum(costs) / len(costs)) if costs else None}}


def api_budget(app, query, body):
    """Feature 3: spend against the hourly and daily budgets, global and per agent."""
    return app.budgets.status()


class Raw:
    """A non-JSON API answer."""

    def __init__(self, ctype, data):
        self.ctype, self.data = ctype, data


def _prom_label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def api_metrics(app, query, body):
    """Prometheus text format: counters since this process started, per agent and model."""
    out = []
    metrics = (("turns", "Turns logged", 0), ("input_tokens", "Uncached input tokens", 1),
               ("output_tokens", "Output tokens", 2), ("cache_read_tokens", "Cache read tokens", 3),
               ("cache_write_tokens", "Cache write tokens", 4), ("cost_usd", "Estimated cost in USD", 5),
               ("failed_turns", "Turns that failed (HTTP >= 400 or an error)", 6))
    counters = dict(app.recorder.counters)
    for name, help_text, i in metrics:
        out.append("# HELP tokenspy_%s_total %s, since this process started." % (name, help_text))
        out.append("# TYPE tokenspy_%s_total counter" % name)
        for (agent, model), c in sorted(counters.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
            out.append('tokenspy_%s_total{agent="%s",model="%s"} %s' % (
                name, _prom_label(agent), _prom_label(model), repr(round(c[i], 8)) if i == 5 else c[i]))
    out.append("# HELP tokenspy_pending_rows Turns waiting to be written to the database.")
    out.append("# TYPE tokenspy_pending_rows gauge")
    out.append("tokenspy_pending_rows %d" % (app.recorder.backlog))
    out.append("# HELP tokenspy_uptime_seconds Seconds since this process started.")
    out.append("# TYPE tokenspy_uptime_seconds gauge")
    out.append("tokenspy_uptime_seconds %d" % (time.time() - app.started))
    return Raw("text/plain; version=0.0.4; charset=utf-8", ("\n".join(out) + "\n").encode("utf-8"))


# (method, path) -> handler(app, query, body). The one place the API is declared.
ROUTES = {
    ("GET", "/health"): api_health,
    ("GET", "/api/usage"): api_usage,
    ("GET", "/token-usage"): api_usage,
    ("GET", "/api/summary"): api_summary,
    ("GET", "/api/settings"): api_settings,
    ("POST", "/api/settings"): api_settings_post,
    ("GET", "/api/session-status"): api_session_status,
    ("POST", "/api/reset-session"): api_reset_session,
    ("GET", "/api/overview"): api_overview,
    ("GET", "/api/agents"): api_agents,
    ("GET", "/api/models"): api_models,
    ("GET", "/api/latency"): api_latency,
    ("GET", "/api/budget"): api_budget,
    ("GET", "/api/session-history"): api_session_history,
    ("GET", "/api/stop-reasons"): api_stop_reasons,
    ("GET", "/api/tools"): api_tools,
    ("GET", "/metrics"): api_metrics,
    ("GET", "/token_events"): None,       # a stream: Handler.serve_token_events
}
API_MAX_BODY = 1 << 20
# POST routes whose body must be JSON (a cross-site form cannot send that without CORS).
JSON_BODY_ROUTES = {"/api/settings"}
# Paths that belong to Token Spy (never relayed), even where a method is not routed.
OWN_PREFIXES = ("/api/", "/dashboard/")
# A copy of Chart.js an operator may put beside dashboard.html for hosts without internet;
# the dashboard loads it from /dashboard/chart.umd.min.js when the CDN cannot be reached.
LOCAL_CHARTJS = "chart.umd.min.js"
OWN_PATHS = {"/health", "/dashboard", "/token-usage", "/token_events", "/metrics", "/api", "/favicon.ico"}


# ---------------------------------------------------------------------------
# HTTP server: the relay and the API on one port
# ---------------------------------------------------------------------------

def fast_parse_headers(fp, _class=http.client.HTTPMessage):
    """http.client.parse_headers without the email package's feed parser.

    Both sides of every relayed request parse headers with it (http.server for the
    client, http.client for the upstream); the stdlib routes them through
    email.feedparser, which was a fifth of the proxy's CPU time. Plain "Name: value"
    lines become the same HTTPMessage (compat32 keeps the value as sent, leading
    blanks removed); anything unusual (folded lines, odd names) goes to the stdlib
    parser, so behaviour only differs in speed.
    """
    lines = http.client._read_headers(fp)
    msg = _class()
    for raw in lines:
        if raw in (b"\r\n", b"\n", b""):
            continue
        line = raw.decode("iso-8859-1")
        name, sep, value = line.partition(":")
        if not sep or not name or name[0] in " \t" or name != name.rstrip() or "\r" in value.rstrip("\r\n"):
            return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))
        msg.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
    return msg


class ClientGone(Exception):
    """The client's connection failed while the relay was writing to it."""


class Handler(BaseHTTPRequestHandler):
    """Serves Token Spy's own paths and relays everything else upstream."""

    protocol_version = "HTTP/1.1"
    server_version = "TokenSpy/" + __version__
    rbufsize = 64 * 1024

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    @property
    def app(self):
        return self.server.app

    def do_any(self):
        target = self.path
        if not target.startswith("/"):           # absolute-form; we are not a forward proxy
            parts = urlsplit(target)
            target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        path, _, query = target.partition("?")
        agent = self.app.config.agent
        if path.startswith("/agent/"):
            _, _, rest = path.partition("/agent/")
            name, slash, remainder = rest.partition("/")
            name = unquote(name)
            if not AGENT_NAME_RE.match(name):
                return self.send_json(400, {"error": "agent name %r in the URL is not valid: use letters, "
                                                     "digits, '.', '_' or '-'" % name, "status": 400})
            agent, path = name, slash + remainder if slash else "/"
        if path in OWN_PATHS or path.startswith(OWN_PREFIXES):
            return self.serve_api(path, query)
        return self.relay(agent, path, query)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_any

    # -- own endpoints ---------------------------------------------------------------

    def serve_api(self, path, query):
        body = self.read_body(limit=API_MAX_BODY)
        if body is None:
            return
        key = (self.command, path) if self.command != "HEAD" else ("GET", path)
        handler = ROUTES.get(key)
        try:
            if key not in ROUTES:
                allowed = sorted(m for (m, p) in ROUTES if p == path)
                if allowed:
                    raise ApiError(405, "%s %s is not supported; use %s" % (self.command, path, ", ".join(allowed)))
                if path == "/dashboard" and self.command in ("GET", "HEAD"):
                    return self.send_file(os.path.join(HERE, "dashboard.html"), "text/html; charset=utf-8")
                if path == "/dashboard/" + LOCAL_CHARTJS and self.command in ("GET", "HEAD"):
                    return self.send_file(os.path.join(HERE, LOCAL_CHARTJS), "text/javascript; charset=utf-8")
                raise ApiError(404, "no such endpoint: %s" % path)
            if self.command != "GET" and self.command != "HEAD":
                self.check_origin()
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if path in JSON_BODY_ROUTES and ctype != "application/json":
                    raise ApiError(400, "send the body as JSON with Content-Type: application/json (got %r)"
                                   % (ctype or "none"))
            if path == "/token_events":
                return self.serve_token_events(parse_qs(query, keep_blank_values=True))
            result = handler(self.app, parse_qs(query, keep_blank_values=True), body)
            if isinstance(result, Raw):
                return self.send_raw(200, result.ctype, result.data)
            self.send_json(200, result)
        except ApiError as exc:
            self.send_json(exc.status, {"error": exc.message, "status": exc.status})
        except Exception:
            log.exception("API %s %s failed", self.command, path)
            self.send_json(500, {"error": "internal error; see Token Spy's log", "status": 500})

    def check_origin(self):
        """Refuse state-changing calls from other web sites (CSRF): a browser always sends
        Origin on a cross-site POST; curl and scripts send none."""
        origin = self.headers.get("Origin")
        fetch_site = (self.headers.get("Sec-Fetch-Site") or "").lower()
        if fetch_site == "cross-site":
            raise ApiError(403, "cross-site requests may not change Token Spy's state")
        if origin and origin != "null":
            host = urlsplit(origin).netloc
            if host.lower() != (self.headers.get("Host") or "").lower():
                raise ApiError(403, "origin %s may not change Token Spy's state" % origin)
        elif origin == "null":
            raise ApiError(403, "requests from an opaque origin may not change Token Spy's state")

    def serve_token_events(self, query):
        """GET /token_events: a server-sent event per logged turn, oldest first, as they land.

        ?after_id=N starts after that row (default: only turns logged from now on). Every
        event carries its row id as the SSE id, so nothing is sent twice.
        """
        after = _number(query, "after_id", None, 0, 2 ** 62, int)
        if after is None:
            after = (self.app.store.query("SELECT MAX(id) AS m FROM usage")[0]["m"] or 0)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            return
        idle = 0.0
        try:
            while True:
                rows = self.app.store.query(
                    "SELECT id, timestamp, agent, model, provider, client_session_id, input_tokens, output_tokens, "
                    "cache_read_tokens, cache_write_tokens, estimated_cost_usd, status, stop_reason, duration_ms "
                    "FROM usage WHERE id > ? ORDER BY id LIMIT 200", (after,))
                parts = []
                for row in rows:
                    after = row["id"]
                    event = dict(row, type="token_usage", session_id=row["client_session_id"] or "",
                                 cost_usd=row["estimated_cost_usd"], agent_name=row["agent"])
                    parts.append("id: %d\nevent: token_usage\ndata: %s\n\n" % (row["id"], json.dumps(event)))
                idle = 0.0 if parts else idle + 1.0
                if not parts and idle >= 15:
                    parts.append(": heartbeat\n\n")
                    idle = 0.0
                if parts:
                    data = "".join(parts).encode("utf-8")
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                if len(rows) < 200:
                    time.sleep(1.0)
        except OSError:
            return

    def send_raw(self, status, ctype, data, cache="no-store", extra=()):
        """One complete response (no body for HEAD): every answer of Token Spy's own."""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status, obj):
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
        self.send_raw(status, "application/json; charset=utf-8", data,
                      extra=(("X-Content-Type-Options", "nosniff"),))

    def send_file(self, path, ctype):
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            raise ApiError(404, "%s is missing beside tokenspy.py" % os.path.basename(path))
        self.send_raw(200, ctype, data, cache="no-cache")

    # -- request body ------------------------------------------------------------------

    def read_body(self, limit=None):
        """The request body (Content-Length or chunked) or None after answering an error."""
        limit = limit or int(self.app.config.max_body_mb * 1024 * 1024)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts, size = [], 0
            while True:
                line = self.rfile.readline(1026)
                try:
                    n = int(line.split(b";")[0].strip(), 16)
                    if n < 0:
                        raise ValueError(n)
                except ValueError:
                    self.close_connection = True
                    self.send_json(400, {"error": "malformed chunked request body", "status": 400})
                    return None
                if n == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                size += n
                if size > limit:
                    self.close_connection = True
                    self.send_json(413, {"error": "request body over %d bytes" % limit, "status": 413})
                    return None
                chunk = self.rfile.read(n)
                if len(chunk) < n:                   # the client went away mid-chunk
                    self.close_connection = True
                    return None
                parts.append(chunk)
                self.rfile.readline(3)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self.send_json(400, {"error": "invalid Content-Length %r" % length, "status": 400})
            return None
        if n > limit:
            self.close_connection = True
            self.send_json(413, {"error": "request body over %d bytes" % limit, "status": 413})
            return None
        data = self.rfile.read(n)
        if len(data) < n:
            self.close_connection = True
            return None
        return data

    # -- relay -------------------------------------------------------------------------

    def relay(self, agent, path, query):
        started, t0 = time.time(), time.perf_counter()       # the request has arrived
        upgrade = (self.headers.get("Upgrade") or "").lower()
        if upgrade:
            return self.refuse_upgrade(upgrade)
        body = self.read_body()
        if body is None:
            return
        app = self.app
        provider, api = route_provider(path, self.headers)
        metered = api is not None and self.command == "POST"
        upstream = app.upstreams[provider]
        full_path = upstream.target(path) + ("?" + query if query else "")
        headers = forwardable(self.headers.items(), REQUEST_DROP, self.headers.get("Connection"))
        if metered:
            narrowed = narrow_accept_encoding(self.headers.get("Accept-Encoding"))
            if narrowed is not None:
                headers = [(k, narrowed if k.lower() == "accept-encoding" else v) for k, v in headers]
            if app.config.inject_stream_usage and api == "chat":
                injected = inject_include_usage(body)
                if injected is not None:
                    body = injected
        flow = None
        if metered:
            flow = Flow(agent, provider, api, upstream.url, self.command, full_path, self.headers, body, started, t0)
        try:
            conn, resp = upstream.request(self.command, full_path, headers, body)
        except UpstreamError as exc:
            status = 504 if exc.timeout else 502
            log.warning("%s %s -> %d: %s", self.command, full_path, status, exc)
            if flow:
                flow.status, flow.error, flow.t_end = status, str(exc), time.perf_counter()
                app.recorder.submit(flow)
            self.send_json(status, proxy_error_body(provider, status, str(exc)))
            return
        if flow:
            flow.ttfb = time.perf_counter()
        self.relay_response(conn, resp, upstream, flow)

    def relay_response(self, conn, resp, upstream, flow):
        app = self.app
        out_headers = forwardable(resp.getheaders(), HOP_BY_HOP, resp.getheader("Connection"))
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        length = resp.getheader("Content-Length") if not resp.chunked else None
        chunked = not no_body and length is None
        if chunked and self.request_version != "HTTP/1.1":
            self.close_connection = True            # HTTP/1.0 client: end of body = close
            chunked = False
        if flow:
            flow.status = resp.status
            flow.response_headers = out_headers
        lines = ["%s %d %s\r\n" % (self.protocol_version, resp.status, resp.reason or "")]
        lines += ["%s: %s\r\n" % (k, v) for k, v in out_headers if k.lower() != "transfer-encoding"]
        if chunked:
            lines.append("Transfer-Encoding: chunked\r\n")
        if self.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        try:
            try:
                self._send("".join(lines).encode("latin-1", "replace"))
                if not no_body:
                    read1 = resp.read1
                    while True:
                        data = read1(65536)
                        if not data:
                            if resp.length:          # the upstream closed before its Content-Length
                                raise http.client.IncompleteRead(b"", resp.length)
                            break
                        self._send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                        if flow:
                            flow.add(data)
                    if chunked:
                        self._send(b"0\r\n\r\n")
            except ClientGone:
                if flow:
                    flow.error = "client disconnected before the response ended"
                self.close_connection = True
                conn.close()                         # stops the upstream generating
                return
            except (socket.timeout, OSError, http.client.HTTPException) as exc:
                # Upstream failed mid-body: the status is already sent, so cut the client off
                # (a truncated chunked body tells it something went wrong).
                log.warning("upstream failed mid-response on %s: %r", flow.path if flow else "", exc)
                if flow:
                    flow.error = "upstream failed mid-response: %s" % (exc or type(exc).__name__)
                self.close_connection = True
                conn.close()
                return
            upstream.release(conn, resp)
        finally:
            if flow:
                flow.t_end = time.perf_counter()
                app.recorder.submit(flow)

    def _send(self, data):
        """Write to the client; a failure there is the client's (not the upstream's)."""
        try:
            self.wfile.write(data)
        except OSError as exc:
            raise ClientGone(exc)

    def refuse_upgrade(self, upgrade):
        """WebSocket (and any other) upgrades are refused at once with 426 Upgrade Required.

        Codex tries the Responses API over a WebSocket first; on a 426 it falls back to a
        plain POST /v1/responses at once (any other answer costs it ~6 s of retries),
        and that POST is what Token Spy meters. Tunnelling the socket would hide the turn.
        """
        self.read_body()
        self.close_connection = True
        self.send_json(426, {"error": {
            "message": "Token Spy does not relay %s upgrades; send the request over plain HTTP(S)" % upgrade,
            "type": "invalid_request_error", "code": "upgrade_not_supported"}})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, app):
        self.app = app
        super().__init__(address, Handler)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout)):
            return
        log.exception("unexpected error serving %s", client_address)


class TokenSpy:
    """The whole program: store, settings, prices, recorder, sessions, upstreams, server."""

    def __init__(self, config, listen=True):
        self.config = config
        http.client.parse_headers = fast_parse_headers       # see fast_parse_headers
        self.started = time.time()
        try:
            self.store = tokenspy_db.Store(config.db)
        except Exception as exc:
            raise ConfigError("--db %s: cannot open the database (%s); pick a writable path with --db or DB_PATH"
                              % (config.db, exc))
        self.settings = SettingsFile(config.settings)
        self.prices = Prices(override=config.prices)
        self.sessions = Sessions(self)
        self.budgets = Budgets(self)
        local = {"agents": config.local_model_agents, "upstream": config.local_upstream}
        self.recorder = Recorder(self.store, self.prices, local,
                                 hooks=[self.sessions.after_log, self.budgets.after_log])
        self.upstreams = {}
        for provider in ("anthropic", "openai"):
            url = getattr(config, provider + "_upstream")
            shared = [u for u in self.upstreams.values() if u.url == url.rstrip("/")]
            self.upstreams[provider] = shared[0] if shared else Upstream(url, config.connect_timeout, config.timeout)
        self.server = self._thread = None
        if listen:
            try:
                self.server = Server((config.host, config.port), self)
            except OSError as exc:
                raise ConfigError("cannot listen on %s:%d (%s); pick another --port or --host"
                                  % (config.host, config.port, exc.strerror or exc))
            self.port = self.server.server_address[1]
            host = config.host if ":" not in config.host else "[%s]" % config.host
            self.url = "http://%s:%d" % (host, self.port)

    def start(self):
        """Serve in background threads (for tests and embedding); returns self."""
        self.recorder.start()
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="tokenspy-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self):
        self.recorder.start()
        try:
            self.server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self):
        if self.server is not None:
            if self._thread:
                self.server.shutdown()
            self.server.server_close()
        if self.recorder.is_alive():
            self.recorder.flush(timeout=10)
            self.recorder.stop()
            self.recorder.join(timeout=10)
        for upstream in set(self.upstreams.values()):
            upstream.close()
        self.store.close()


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def manage_main(argv):
    """tokenspy.py manage: one session-manager pass (what session-manager.sh runs)."""
    parser = argparse.ArgumentParser(prog="tokenspy.py manage", add_help=False)
    parser.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    parser.add_argument("--only-agent", action="append", help="limit the pass to this agent (repeatable)")
    parser.add_argument("--inactive-minutes", type=int, default=60,
                        help="archive sessions not in sessions.json and idle this long (default 60)")
    parser.add_argument("--max-sessions", type=int, default=5, help="session files kept per agent (default 5)")
    parser.add_argument("--retention-days", type=float, default=7,
                        help="delete archived session files older than this (default 7)")
    own, rest = parser.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        parser.print_help()
        print("\nAll of tokenspy.py's flags (--db, --settings, --agent-session-dirs, ...) apply too.")
        return 0
    if own.max_sessions < 1 or own.inactive_minutes < 1 or own.retention_days <= 0:
        print("tokenspy manage: error: --max-sessions, --inactive-minutes and --retention-days must be positive",
              file=sys.stderr)
        return 2
    config = load_config(rest)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = TokenSpy(config, listen=False)
    try:
        if not config.agent_session_dirs:
            log.info("no agent has a sessions dir (--sessions-dir / AGENT_SESSION_DIRS): nothing to manage")
        report = app.sessions.manage(own.only_agent, own.inactive_minutes, own.max_sessions,
                                     own.retention_days, own.dry_run)
    finally:
        app.close()
    print(json.dumps(report, indent=2))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["manage"]:
            return manage_main(argv[1:])
        if argv[:1] == ["_analyze"]:
            return analyzer_main()
        config = load_config(argv)
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        app = TokenSpy(config)
    except ConfigError as exc:
        print("tokenspy: error: %s" % exc, file=sys.stderr)
        return 2
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this address can read your usage and use "
                    "the API; bind 127.0.0.1 unless you mean it", config.host)
    log.info("Token Spy %s on %s (agent %s) -> anthropic %s, openai %s; db %s", __version__, app.url,
             config.agent, config.anthropic_upstream, config.openai_upstream, config.db)
    app.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
