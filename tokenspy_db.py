"""Token Spy storage: one SQLite file, shared by every Token Spy process on the host.

The schema lives in MIGRATIONS and nowhere else: each entry upgrades the file by one
step and bumps ``PRAGMA user_version``. Writes come from exactly one writer thread per
process (``Store.insert_turns``), in batches, under ``BEGIN IMMEDIATE`` so several
processes can share the file (WAL, busy timeout, retry). Reads use a small pool of
read-only connections.

Timestamps are stored as fixed-width UTC ISO-8601 strings with milliseconds
(``2026-12-04T16:19:55.123Z``). Every cutoff is computed in Python in the same format,
so string comparison is time comparison (the earlier implementation compared against
SQLite's ``datetime()`` format and so returned whole days for "last hour").
"""

import hashlib
import json
import os
import queue
import sqlite3
import time
from datetime import datetime, timezone

BUSY_TIMEOUT_MS = 10000

# How a turn counts as failed, unpriced or without usage: one definition for every query.
FAILED_SQL = "(status >= 400 OR error IS NOT NULL)"
_PROMPT = "COALESCE(input_tokens, 0) + COALESCE(cache_read_tokens, 0) + COALESCE(cache_write_tokens, 0)"
# The additive aggregates behind the dashboard, summary and model views: (name, SQL over
# `usage`, how two partial results combine). The hourly rollup table has one column per
# entry, filled by the same SQL, so a window read from raw rows and one read from the
# rollup give the same numbers. Averages are sum / n, taken after combining.
AGGREGATES = (
    ("turns", "COUNT(*)", "sum"),
    ("cost_usd", "SUM(estimated_cost_usd)", "sum"),
    ("priced_turns", "COUNT(estimated_cost_usd)", "sum"),
    ("priced_output_tokens", "SUM(CASE WHEN estimated_cost_usd IS NOT NULL THEN output_tokens END)", "sum"),
    ("input_tokens", "SUM(input_tokens)", "sum"),
    ("input_n", "COUNT(input_tokens)", "sum"),
    ("output_tokens", "SUM(output_tokens)", "sum"),
    ("cache_read_tokens", "SUM(cache_read_tokens)", "sum"),
    ("cache_write_tokens", "SUM(cache_write_tokens)", "sum"),
    ("cost_input_usd", "SUM(cost_input_usd)", "sum"),
    ("cost_output_usd", "SUM(cost_output_usd)", "sum"),
    ("cost_cache_read_usd", "SUM(cost_cache_read_usd)", "sum"),
    ("cost_cache_write_usd", "SUM(cost_cache_write_usd)", "sum"),
    ("cache_savings_usd", "SUM(cache_savings_usd)", "sum"),
    ("failed_turns", "SUM(CASE WHEN %s THEN 1 ELSE 0 END)" % FAILED_SQL, "sum"),
    ("unpriced_turns", "SUM(CASE WHEN estimated_cost_usd IS NULL AND usage_source != 'missing' THEN 1 ELSE 0 END)",
     "sum"),
    ("turns_without_usage", "SUM(CASE WHEN usage_source = 'missing' THEN 1 ELSE 0 END)", "sum"),
    ("max_history_chars", "MAX(conversation_history_chars)", "max"),
    ("max_input_tokens", "MAX(input_tokens)", "max"),
    ("dur_sum", "SUM(duration_ms)", "sum"),
    ("dur_n", "COUNT(duration_ms)", "sum"),
    ("ttfb_sum", "SUM(ttfb_ms)", "sum"),
    ("ttfb_n", "COUNT(ttfb_ms)", "sum"),
    ("prompt_sum", "SUM(CASE WHEN usage_source != 'missing' THEN %s END)" % _PROMPT, "sum"),
    ("prompt_n", "SUM(CASE WHEN usage_source != 'missing' THEN 1 ELSE 0 END)", "sum"),
    ("sys_sum", "SUM(system_prompt_total_chars)", "sum"),
    ("sys_n", "COUNT(system_prompt_total_chars)", "sum"),
    ("hist_sum", "SUM(conversation_history_chars)", "sum"),
    ("hist_n", "COUNT(conversation_history_chars)", "sum"),
    ("skill_sum", "SUM(skill_injection_chars)", "sum"),
    ("skill_n", "COUNT(skill_injection_chars)", "sum"),
    ("base_sum", "SUM(base_prompt_chars)", "sum"),
    ("base_n", "COUNT(base_prompt_chars)", "sum"),
    ("provider", "MAX(provider)", "max"),
    ("first_turn", "MIN(timestamp)", "min"),
    ("last_turn", "MAX(timestamp)", "max"),
)
_AGG_SQL = ", ".join("%s AS %s" % (sql, name) for name, sql, _ in AGGREGATES)
_TYPES = {"provider": "TEXT", "first_turn": "TEXT", "last_turn": "TEXT"}
_MERGE = {"sum": "COALESCE({c} + excluded.{c}, {c}, excluded.{c})",
          "max": "MAX(COALESCE({c}, excluded.{c}), COALESCE(excluded.{c}, {c}))",
          "min": "MIN(COALESCE({c}, excluded.{c}), COALESCE(excluded.{c}, {c}))"}
_ROLLUP_SUM = {"sum": "SUM", "max": "MAX", "min": "MIN"}
# Upsert turns into the hourly rollup with the same SQL as the raw path (used by the
# migration that creates it, and by the trigger that keeps it up to date).
ROLLUP_UPSERT = (
    "INSERT INTO hourly (hour, agent, model, %s) SELECT (ts / 3600000) * 3600, agent, COALESCE(model, ''), %s "
    "FROM usage WHERE id BETWEEN ? AND ? GROUP BY 1, 2, 3 ON CONFLICT (hour, agent, model) DO UPDATE SET %s" % (
        ", ".join(n for n, _, _ in AGGREGATES), ", ".join(sql for _, sql, _ in AGGREGATES),
        ", ".join("%s = %s" % (n, _MERGE[k].format(c=n)) for n, _, k in AGGREGATES)))
# Why a turn ended, errors first.
STOP_SQL = ("CASE WHEN status >= 400 THEN 'error' WHEN stop_reason IS NOT NULL THEN stop_reason "
            "WHEN error IS NOT NULL THEN 'error' ELSE 'unknown' END")
# Counting rollups: table -> the columns it counts turns by per hour and agent, as
# (name, SQL over usage, the value standing for NULL). Same trigger, same idea.
COUNT_ROLLUPS = {
    "hourly_stops": (("model", "model", ""), ("reason", STOP_SQL, "")),
    "hourly_tools": (("toolset_id", "toolset_id", 0), ("tools_called", "tools_called", "")),
}


def _count_upsert(table, where):
    dims = COUNT_ROLLUPS[table]
    return ("INSERT INTO %s (hour, agent, %s, turns) SELECT (ts / 3600000) * 3600, agent, %s, COUNT(*) "
            "FROM usage WHERE %s GROUP BY 1, 2, %s ON CONFLICT (hour, agent, %s) DO UPDATE SET turns = turns + excluded.turns"
            % (table, ", ".join(n for n, _, _ in dims), ", ".join("COALESCE(%s, %r)" % (sql, null) for _, sql, null in dims),
               where, ", ".join(str(i + 3) for i in range(len(dims))), ", ".join(n for n, _, _ in dims)))


ROLLUP_BATCH = (ROLLUP_UPSERT,) + tuple(_count_upsert(t, "id BETWEEN ? AND ?") for t in COUNT_ROLLUPS)
ROLLUP_MIN_HOURS = 48            # bucketed series at least this long read whole hours from the rollup
ROLLUP_MIN_HOURS_TOTALS = 3      # so do plain totals (no time buckets)


def rollup_span(since_ts, bucket_s, min_hours):
    """(first whole hour, current hour start, use the rollup?) for a window from since_ts
    to now: whole hours in between come from a rollup when there are at least min_hours
    of them and time buckets (if any) are whole hours; the edges from raw rows."""
    h0 = -(-int(since_ts) // 3600) * 3600
    h1 = int(time.time()) // 3600 * 3600
    return h0, h1, h1 - h0 >= min_hours * 3600 and (bucket_s is None or bucket_s % 3600 == 0)

# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------

# Every column of a logged turn, in table order, after `id`. The writer inserts exactly
# these; /api/usage returns them. Earlier implementation names are kept as they were.
USAGE_COLUMNS = (
    "timestamp",                 # request start, UTC, '%Y-%m-%dT%H:%M:%S.mmmZ'
    "agent",
    "provider",                  # anthropic | openai
    "api",                       # messages | chat | responses | completions | embeddings
    "upstream",                  # upstream base URL
    "method",
    "path",                      # path sent upstream, query string included
    "model",                     # the model priced: response model, else requested model
    "requested_model",
    "response_model",
    "stream",                    # 0/1
    "status",                    # HTTP status sent to the client (502/504 when Token Spy answered)
    "error",                     # error text: upstream error message, transport error, disconnect
    "input_tokens",              # uncached input; input + cache_read + cache_write = whole prompt
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_5m_tokens",     # short-TTL part of cache_write (Anthropic 5m, OpenAI 30m)
    "cache_write_1h_tokens",     # long-TTL part (Anthropic 1h, OpenAI 12h)
    "reasoning_tokens",          # part of output_tokens, never added to it
    "usage_source",              # provider | partial | estimated | missing
    "usage_raw",                 # the provider's usage object(s) as JSON text
    "estimated_cost_usd",        # NULL when the usage or the price is unknown
    "price_entry",               # price table key used, 'local' for self-hosted, NULL if unpriced
    "price_version",
    "duration_ms",               # request received -> last byte relayed
    "ttfb_ms",                   # request received -> first response byte from upstream
    "stop_reason",
    "request_id",                # upstream request id (request-id / x-request-id)
    "client_session_id",         # X-Claude-Code-Session-Id, session-id, ...
    "request_body_bytes",
    "response_body_bytes",
    "message_count",
    "user_message_count",
    "assistant_message_count",
    "conversation_history_chars",
    "system_prompt_total_chars",
    "workspace_agents_chars",
    "workspace_soul_chars",
    "workspace_tools_chars",
    "workspace_identity_chars",
    "workspace_user_chars",
    "workspace_heartbeat_chars",
    "workspace_bootstrap_chars",
    "workspace_memory_chars",
    "workspace_other_chars",
    "skill_injection_chars",
    "base_prompt_chars",
    "tool_count",                # tool definitions sent in the request
    "tool_defs_chars",           # their compact-JSON size
    "tools_called",              # JSON list of tool names the response called
    # schema 3
    "ts",                        # epoch milliseconds of `timestamp`
    "cost_input_usd",            # the parts of estimated_cost_usd ...
    "cost_output_usd",
    "cost_cache_read_usd",
    "cost_cache_write_usd",
    "cache_savings_usd",         # ... and what caching saved (negative when writes cost more)
    "toolset_id",                # the set of tool definitions sent (toolsets table)
)

_USAGE_TYPES = {c: "INTEGER" for c in USAGE_COLUMNS}
_USAGE_TYPES.update({c: "TEXT" for c in (
    "timestamp", "agent", "provider", "api", "upstream", "method", "path", "model",
    "requested_model", "response_model", "error", "usage_source", "usage_raw",
    "price_entry", "price_version", "stop_reason", "request_id", "client_session_id",
    "tools_called")})
for _c in ("estimated_cost_usd", "cost_input_usd", "cost_output_usd", "cost_cache_read_usd",
           "cost_cache_write_usd", "cache_savings_usd"):
    _USAGE_TYPES[_c] = "REAL"
_USAGE_TYPES["timestamp"] = "TEXT NOT NULL"
_USAGE_TYPES["agent"] = "TEXT NOT NULL"


def _create_usage():
    cols = ",\n  ".join("%s %s" % (c, _USAGE_TYPES[c]) for c in USAGE_COLUMNS[:USAGE_COLUMNS.index("ts")])
    return "CREATE TABLE usage (\n  id INTEGER PRIMARY KEY AUTOINCREMENT,\n  %s\n)" % cols


# One entry per schema version: (description, SQL statements). Never edit a shipped
# entry; append a new one.
MIGRATIONS = (
    ("per-turn usage log", (
        _create_usage(),
        "CREATE INDEX idx_usage_timestamp ON usage(timestamp)",
        "CREATE INDEX idx_usage_agent_timestamp ON usage(agent, timestamp)",
    )),
    ("session resets", (
        """CREATE TABLE resets (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  timestamp TEXT NOT NULL,        -- when the session file was archived (UTC)
  agent TEXT NOT NULL,
  session_id TEXT NOT NULL,
  reason TEXT NOT NULL,           -- auto | manual | session-manager | inactive | count-limit
  detail TEXT,                    -- why, in words (history chars vs limit, ...)
  file TEXT,                      -- the session file that was archived
  archived_to TEXT,               -- where it went
  size_bytes INTEGER,
  history_chars INTEGER,          -- the history that triggered it, when known
  pid INTEGER,                    -- the Token Spy process that did it
  UNIQUE (agent, session_id)      -- one reset per session, whichever process gets there first
)""",
        "CREATE INDEX idx_resets_agent_timestamp ON resets(agent, timestamp)",
    )),
    ("cost parts, epoch time, tool sets, budget alerts", (
        "ALTER TABLE usage ADD COLUMN ts INTEGER",                 # epoch ms of timestamp, for bucketing
        "UPDATE usage SET ts = CAST(ROUND((julianday(timestamp) - 2440587.5) * 86400000) AS INTEGER)",
        "ALTER TABLE usage ADD COLUMN cost_input_usd REAL",
        "ALTER TABLE usage ADD COLUMN cost_output_usd REAL",
        "ALTER TABLE usage ADD COLUMN cost_cache_read_usd REAL",
        "ALTER TABLE usage ADD COLUMN cost_cache_write_usd REAL",
        "ALTER TABLE usage ADD COLUMN cache_savings_usd REAL",   # vs. the input rate for the whole prompt
        "ALTER TABLE usage ADD COLUMN toolset_id INTEGER",        # -> toolsets.id
        """CREATE TABLE toolsets (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  hash TEXT NOT NULL UNIQUE,      -- sha1 of tools
  tools TEXT NOT NULL             -- JSON [[name, definition chars], ...] as sent, in order
)""",
        """CREATE TABLE alerts (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  timestamp TEXT NOT NULL,
  key TEXT NOT NULL UNIQUE,       -- scope/agent/period/window start: one alert per crossing
  payload TEXT NOT NULL,          -- the JSON sent to the webhook
  delivered INTEGER,              -- 1 sent, 0 failed, NULL no webhook configured
  detail TEXT
)""",
        "CREATE INDEX idx_usage_model_timestamp ON usage(model, timestamp)",
    )),
    ("hourly rollup", (
        "CREATE TABLE hourly (hour INTEGER NOT NULL, agent TEXT NOT NULL, model TEXT NOT NULL, %s, "
        "PRIMARY KEY (hour, agent, model))" % ", ".join("%s %s" % (n, _TYPES.get(n, "NUMERIC")) for n, _, _ in AGGREGATES),
        ROLLUP_UPSERT.replace("id BETWEEN ? AND ?", "ts IS NOT NULL"),
        # Every insert keeps the rollup (and ts) right, whoever writes the row.
    ) + tuple(
        "CREATE TABLE %s (hour INTEGER NOT NULL, agent TEXT NOT NULL, %s, turns INTEGER NOT NULL, "
        "PRIMARY KEY (hour, agent, %s))" % (table, ", ".join("%s NOT NULL" % n for n, _, _ in dims),
                                           ", ".join(n for n, _, _ in dims))
        for table, dims in COUNT_ROLLUPS.items()
    ) + tuple(_count_upsert(table, "ts IS NOT NULL") for table in COUNT_ROLLUPS) + (
        # Rows written without ts (by anything but Store.insert_turns, which rolls up its
        # whole batch at once) get ts and their rollups here.
        "CREATE TRIGGER usage_rollup AFTER INSERT ON usage WHEN NEW.ts IS NULL BEGIN "
        "UPDATE usage SET ts = CAST(ROUND((julianday(NEW.timestamp) - 2440587.5) * 86400000) AS INTEGER) "
        "WHERE id = NEW.id AND NEW.ts IS NULL; %s; %s END" % (
            ROLLUP_UPSERT.replace("id BETWEEN ? AND ?", "id = NEW.id"),
            " ".join(_count_upsert(t, "id = NEW.id") + ";" for t in COUNT_ROLLUPS)),
    )),
)


def migrate(conn):
    """Bring the file up to the newest schema, one numbered step at a time."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, (_, statements) in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            for sql in statements:
                conn.execute(sql)
            conn.execute("PRAGMA user_version = %d" % number)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)


def iso_utc(ts):
    """Epoch seconds -> the stored timestamp format (fixed width, so it sorts as time)."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (dt.microsecond // 1000)


def parse_iso(text):
    """Stored timestamp -> epoch seconds."""
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _connect(path, readonly=False):
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000.0, isolation_level=None,
                           check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = %d" % BUSY_TIMEOUT_MS)
    if readonly:
        conn.execute("PRAGMA query_only = 1")
    conn.row_factory = sqlite3.Row
    return conn


# ---------------------------------------------------------------------------
# Store
# ---------------------------------------------------------------------------

class Store:
    """The SQLite file. One instance per process.

    ``insert_turns`` is for the writer thread only; the query methods may be called from
    any thread (they borrow a read-only connection from a pool).
    """

    def __init__(self, path):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise OSError("folder %s does not exist" % directory)
        conn = _connect(path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            migrate(conn)
        finally:
            conn.close()
        self._writer = None
        self._toolsets = {}
        self._readers = queue.LifoQueue()
        self._insert_sql = "INSERT INTO usage (%s) VALUES (%s)" % (
            ", ".join(USAGE_COLUMNS), ", ".join("?" * len(USAGE_COLUMNS)))

    # -- writing (writer thread) --------------------------------------------------

    def insert_turns(self, rows, attempts=5):
        """Insert rows (dicts keyed by USAGE_COLUMNS) in one transaction.

        Retries while another process holds the write lock; raises after `attempts`.
        Returns the new row ids.
        """
        if self._writer is None:
            self._writer = _connect(self.path)
            self._writer.execute("PRAGMA synchronous = NORMAL")
        for row in rows:
            if row.get("ts") is None and row.get("timestamp"):
                row["ts"] = int(round(parse_iso(row["timestamp"]) * 1000))
        delay = 0.05
        for attempt in range(attempts):
            try:
                cur = self._writer.cursor()
                cur.execute("BEGIN IMMEDIATE")
                ids = []
                try:
                    for row in rows:
                        if row.get("tool_defs"):
                            row["toolset_id"] = self._toolset(cur, row["tool_defs"])
                        cur.execute(self._insert_sql, tuple(row.get(c) for c in USAGE_COLUMNS))
                        ids.append(cur.lastrowid)
                    if ids:                  # one transaction, one writer: the ids are a range
                        for sql in ROLLUP_BATCH:
                            cur.execute(sql, (ids[0], ids[-1]))
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    self._toolsets.clear()       # ids inserted in this transaction are gone
                    raise
                return ids
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if attempt == attempts - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        return []

    def _toolset(self, cur, tools):
        """Id of a set of tool definitions [(name, chars), ...], stored once per distinct set."""
        text = json.dumps([list(t) for t in tools], separators=(",", ":"))
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
        cached = self._toolsets.get(digest)
        if cached is not None:
            return cached
        cur.execute("INSERT OR IGNORE INTO toolsets (hash, tools) VALUES (?, ?)", (digest, text))
        tid = cur.execute("SELECT id FROM toolsets WHERE hash = ?", (digest,)).fetchone()[0]
        if len(self._toolsets) > 10000:
            self._toolsets.clear()
        self._toolsets[digest] = tid
        return tid

    def claim_reset(self, row):
        """Record a reset before doing it. False if any process already reset this session."""
        conn = _connect(self.path)
        try:
            cur = conn.execute(
                "INSERT OR IGNORE INTO resets (timestamp, agent, session_id, reason, detail, file, "
                "archived_to, size_bytes, history_chars, pid) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (row["timestamp"], row["agent"], row["session_id"], row["reason"], row.get("detail"),
                 row.get("file"), row.get("archived_to"), row.get("size_bytes"),
                 row.get("history_chars"), os.getpid()))
            return cur.rowcount == 1
        finally:
            conn.close()

    def unclaim_reset(self, agent, session_id):
        """Forget a claimed reset whose file operation failed, so it can be tried again."""
        conn = _connect(self.path)
        try:
            conn.execute("DELETE FROM resets WHERE agent = ? AND session_id = ?", (agent, session_id))
        finally:
            conn.close()

    def writable(self):
        """True when this process can write the file right now."""
        return os.access(self.path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(self.path)), os.W_OK)

    # -- reading (any thread) -----------------------------------------------------

    def _reader(self):
        try:
            return self._readers.get_nowait()
        except queue.Empty:
            return _connect(self.path, readonly=True)

    def query(self, sql, params=()):
        conn = self._reader()
        try:
            return [dict(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            self._readers.put(conn)

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break

    # -- the guide's queries ------------------------------------------------------

    def usage(self, hours=24, limit=100, agent=None):
        """Raw turns in the last `hours`, newest first."""
        sql = "SELECT * FROM usage WHERE timestamp >= ?"
        params = [iso_utc(time.time() - hours * 3600)]
        if agent:
            sql += " AND agent = ?"
            params.append(agent)
        sql += " ORDER BY timestamp DESC, id DESC LIMIT ?"
        params.append(int(limit))
        rows = self.query(sql, params)
        for row in rows:
            for key in ("usage_raw", "tools_called"):
                if row.get(key):
                    try:
                        row[key] = json.loads(row[key])
                    except ValueError:
                        pass
        return rows

    def agent_turns(self, agent, since_ts, limit=2000):
        """An agent's turns since a time, oldest first (the columns session logic needs)."""
        rows = self.query(
            "SELECT id, timestamp, status, error, conversation_history_chars, message_count, "
            "estimated_cost_usd, cache_read_tokens, cache_write_tokens, client_session_id, model "
            "FROM usage WHERE agent = ? AND timestamp >= ? ORDER BY timestamp DESC, id DESC LIMIT ?",
            (agent, iso_utc(since_ts), int(limit)))
        rows.reverse()
        return rows

    def last_reset(self, agent, reasons=None):
        """The agent's newest reset, optionally only those with one of `reasons`."""
        sql, params = "SELECT * FROM resets WHERE agent = ?", [agent]
        if reasons:
            sql += " AND reason IN (%s)" % ",".join("?" * len(reasons))
            params.extend(reasons)
        rows = self.query(sql + " ORDER BY timestamp DESC, id DESC LIMIT 1", params)
        return rows[0] if rows else None

    def resets(self, agent=None, since_ts=0, limit=1000):
        sql, params = "SELECT * FROM resets WHERE timestamp >= ?", [iso_utc(since_ts)]
        if agent:
            sql += " AND agent = ?"
            params.append(agent)
        return self.query(sql + " ORDER BY timestamp DESC, id DESC LIMIT ?", params + [int(limit)])

    def first_ts(self, agent=None):
        """Epoch ms of the oldest turn (of an agent), or None."""
        sql, params = "SELECT MIN(timestamp) AS t FROM usage", []
        if agent:
            sql, params = sql + " WHERE agent = ?", [agent]
        t = self.query(sql, params)[0]["t"]
        return int(round(parse_iso(t) * 1000)) if t else None

    def aggregate(self, since_ts, agent=None, by=(), bucket_s=None):
        """AGGREGATES over the turns since a time, grouped by columns of `by` ('agent',
        'model') and, with bucket_s, by time bucket ('t', epoch ms). -> list of dicts.

        Long windows read their whole hours from the hourly rollup and only the partial
        hours at each end from raw rows: the same numbers, without scanning every turn.
        """
        h0, h1, rollup = rollup_span(since_ts, bucket_s, ROLLUP_MIN_HOURS_TOTALS if bucket_s is None
                                     else ROLLUP_MIN_HOURS)
        parts = []
        if rollup:
            parts += self._aggregate_raw(since_ts, h0, agent, by, bucket_s)
            parts += self._aggregate_rollup(h0, h1, agent, by, bucket_s)
            parts += self._aggregate_raw(h1, None, agent, by, bucket_s)
        else:
            parts = self._aggregate_raw(since_ts, None, agent, by, bucket_s)
        return self.merge(parts, tuple(by) + (("t",) if bucket_s else ()))

    @staticmethod
    def merge(parts, keys=()):
        """Combine partial AGGREGATES rows that share the values of `keys`, sorted by them."""
        merged = {}
        for row in parts:
            key = tuple(row[k] for k in keys)
            if key not in merged:
                merged[key] = dict(row)
                continue
            into = merged[key]
            for name, _, kind in AGGREGATES:
                a, b = into[name], row[name]
                if a is None or b is None:
                    into[name] = a if b is None else b
                elif kind == "sum":
                    into[name] = a + b
                else:
                    into[name] = max(a, b) if kind == "max" else min(a, b)
        return [merged[k] for k in sorted(merged, key=lambda k: tuple("" if v is None else v for v in k))]

    def _aggregate_raw(self, since_ts, until_ts, agent, by, bucket_s):
        where, params = self._where(since_ts, agent)
        if until_ts is not None:
            where += " AND timestamp < ?"
            params.append(iso_utc(until_ts))
        cols = ["%s AS %s" % (c, c) for c in by]
        if bucket_s:
            w = int(bucket_s * 1000)
            cols.append("(ts / %d) * %d AS t" % (w, w))
        group = ["+%s" % c for c in by] + (["t"] if bucket_s else [])
        return self.query("SELECT %s FROM usage WHERE %s%s" % (
            ", ".join(cols + [_AGG_SQL]), where, " GROUP BY " + ", ".join(group) if group else ""), params)

    def _aggregate_rollup(self, h0, h1, agent, by, bucket_s):
        where, params = "hour >= ? AND hour < ?", [h0, h1]
        if agent:
            where += " AND agent = ?"
            params.append(agent)
        cols = ["%s AS %s" % ("NULLIF(model, '')" if c == "model" else c, c) for c in by]
        group = list(by)
        if bucket_s:
            w = int(bucket_s * 1000)
            cols.append("(hour * 1000 / %d) * %d AS t" % (w, w))
            group.append("t")
        aggs = ", ".join("%s(%s) AS %s" % (_ROLLUP_SUM[k], n, n) for n, _, k in AGGREGATES)
        rows = self.query("SELECT %s FROM hourly WHERE %s%s" % (
            ", ".join(cols + [aggs]), where, " GROUP BY " + ", ".join(group) if group else ""), params)
        return [r for r in rows if r["turns"]]

    def totals(self, since_ts, agent=None, group_by=None):
        """Aggregates over turns since a time, grouped by 'agent' or 'model' (or not)."""
        if group_by not in (None, "agent", "model"):
            raise ValueError(group_by)
        rows = self.aggregate(since_ts, agent, (group_by,) if group_by else ())
        if group_by:
            return rows
        return rows[0] if rows else dict(dict.fromkeys(n for n, _, _ in AGGREGATES), turns=0)

    def buckets(self, since_ts, width_s, agent=None):
        """Per time bucket ('t', epoch ms) and agent: AGGREGATES."""
        return self.aggregate(since_ts, agent, ("agent",), bucket_s=width_s)

    # -- roadmap analytics (each one GROUP BY over the window; see README for fields) ----

    def model_stats(self, since_ts, agent=None):
        """Per model: AGGREGATES plus the p95 duration, most expensive first."""
        rows = self.aggregate(since_ts, agent, ("model",))
        p95 = self.percentile_by("model", 95, since_ts, agent)
        for row in rows:
            row["p95_duration_ms"] = p95.get(row["model"])
        rows.sort(key=lambda r: -(r["cost_usd"] or 0))
        return rows

    def percentiles_by(self, column, pcts, since_ts, agent=None, value="duration_ms"):
        """Nearest-rank percentiles of `value` per `column` -> {key: {pct: value}}."""
        where, params = self._where(since_ts, agent)
        key = "+%s" % column if column else "NULL"
        rows = self.query("SELECT %s AS k, %s AS v, COUNT(*) AS c FROM usage WHERE %s AND %s IS NOT NULL "
                          "GROUP BY k, +v" % (key, value, where, value), params)
        groups = {}
        for r in rows:
            groups.setdefault(r["k"], []).append((r["v"], r["c"]))
        out = {}
        for k, vals in groups.items():
            vals.sort()
            n = sum(c for _, c in vals)
            res, cum, i = {}, 0, 0
            for pct in sorted(pcts):
                rank = (n * pct + 99) // 100
                while cum + vals[i][1] < rank:
                    cum += vals[i][1]
                    i += 1
                res[pct] = vals[i][0]
            out[k] = res
        return out

    def percentile_by(self, column, pct, since_ts, agent=None, value="duration_ms"):
        """One nearest-rank percentile per `column` value -> {key: value}."""
        return {k: v[pct] for k, v in self.percentiles_by(column, (pct,), since_ts, agent, value).items()}

    def latency_buckets(self, since_ts, width_s, agent=None):
        """Per time bucket, model and agent: turns, summed and maximum duration."""
        where, params = self._where(since_ts, agent)
        w = int(width_s * 1000)
        return self.query(
            "SELECT (ts / %d) * %d AS t, model, agent, COUNT(*) AS turns, SUM(duration_ms) AS sum_ms, "
            "MAX(duration_ms) AS max_ms FROM usage WHERE %s AND duration_ms IS NOT NULL "
            "GROUP BY t, +model, +agent" % (w, w, where), params)

    PROMPT_SQL = "(%s)" % _PROMPT

    def latency_points(self, since_ts, agent=None, limit=1000):
        """Context size vs latency: sums for the correlation over every turn with usage,
        and an even sample of at most `limit` points."""
        where, params = self._where(since_ts, agent)
        where += " AND duration_ms IS NOT NULL AND usage_source != 'missing'"
        x = self.PROMPT_SQL
        agg = self.query("SELECT COUNT(*) AS n, SUM(%s) AS sx, SUM(duration_ms) AS sy, SUM(%s * duration_ms) AS sxy, "
                         "SUM(%s * %s) AS sxx, SUM(duration_ms * duration_ms) AS syy FROM usage WHERE %s"
                         % (x, x, x, x, where), params)[0]
        step = max(1, -(-(agg["n"] or 0) // limit))
        points = self.query("SELECT %s AS x, duration_ms AS y FROM usage WHERE %s AND id %% %d = 0 LIMIT %d"
                            % (x, where, step, limit), params)
        return agg, points

    def slowest(self, since_ts, threshold_ms, agent=None, limit=50):
        where, params = self._where(since_ts, agent)
        return self.query(
            "SELECT id, timestamp, agent, model, duration_ms, ttfb_ms, status, stream, %s AS prompt_tokens, "
            "output_tokens FROM usage WHERE %s AND duration_ms > ? ORDER BY duration_ms DESC LIMIT ?"
            % (self.PROMPT_SQL, where), params + [threshold_ms, limit])


    def counts(self, table, since_ts, agent=None, bucket_s=None):
        """Turns per agent and COUNT_ROLLUPS[table] columns (and time bucket 't'), from raw
        rows or, for long windows, whole hours of the rollup plus the edges."""
        dims = COUNT_ROLLUPS[table]
        h0, h1, use = rollup_span(since_ts, bucket_s, ROLLUP_MIN_HOURS)
        w = int(bucket_s * 1000) if bucket_s else None
        t_raw = ["(ts / %d) * %d AS t" % (w, w)] if w else []
        t_up = ["(hour * 1000 / %d) * %d AS t" % (w, w)] if w else []
        group = ", ".join(["agent"] + [n for n, _, _ in dims] + (["t"] if w else []))
        parts = []

        def raw(lo, hi):
            where, params = self._where(lo, agent)
            if hi is not None:
                where += " AND timestamp < ?"
                params.append(iso_utc(hi))
            cols = ["agent"] + ["COALESCE(%s, %r) AS %s" % (sql, null, n) for n, sql, null in dims] + t_raw
            # '+agent': group without walking the agent index (it would read every turn)
            parts.extend(self.query("SELECT %s, COUNT(*) AS turns FROM usage WHERE %s GROUP BY +%s"
                                    % (", ".join(cols), where, group), params))
        if use:
            raw(since_ts, h0)
            where, params = "hour >= ? AND hour < ?", [h0, h1]
            if agent:
                where += " AND agent = ?"
                params.append(agent)
            parts.extend(self.query("SELECT %s, SUM(turns) AS turns FROM %s WHERE %s GROUP BY %s" % (
                ", ".join(["agent"] + [n for n, _, _ in dims] + t_up), table, where, group), params))
            raw(h1, None)
        else:
            raw(since_ts, None)
        merged = {}
        for row in parts:
            key = tuple(row[k] for k in row if k != "turns")
            if key in merged:
                merged[key]["turns"] += row["turns"]
            else:
                merged[key] = dict(row)
        out = list(merged.values())
        for row in out:
            for n, _, null in dims:
                if row[n] == null:
                    row[n] = None
        return out

    def stop_reason_rows(self, since_ts, width_s, agent=None):
        """Turns per time bucket, stop reason (errors as 'error'), model and agent."""
        return self.counts("hourly_stops", since_ts, agent, width_s)

    def turns_with_stop(self, since_ts, reasons, agent=None, limit=20):
        where, params = self._where(since_ts, agent)
        return self.query(
            "SELECT id, timestamp, agent, model, stop_reason, output_tokens, status FROM usage WHERE %s "
            "AND stop_reason IN (%s) ORDER BY timestamp DESC LIMIT ?" % (where, ",".join("?" * len(reasons))),
            params + list(reasons) + [limit])

    def tool_usage(self, since_ts, agent=None):
        """-> ({toolset tools JSON: turns carrying it}, {tool name: times called})."""
        rows = [dict(r, n=r["turns"]) for r in self.counts("hourly_tools", since_ts, agent)]
        per_set, calls = {}, {}
        for r in rows:
            if r["toolset_id"] is not None:
                per_set[r["toolset_id"]] = per_set.get(r["toolset_id"], 0) + r["n"]
            if r["tools_called"]:
                for name in json.loads(r["tools_called"]):
                    calls[name] = calls.get(name, 0) + r["n"]
        sets = []
        if per_set:
            ids = sorted(per_set)
            for s in self.query("SELECT id, tools FROM toolsets WHERE id IN (%s)" % ",".join("?" * len(ids)), ids):
                sets.append({"tools": s["tools"], "turns": per_set[s["id"]]})
        return sets, calls

    def session_turns(self, agent, since_ts, limit=200000):
        """An agent's newest `limit` turns since a time, oldest first (for the session history)."""
        return self.query(
            "SELECT id, timestamp, ts, status, error, conversation_history_chars, message_count, "
            "estimated_cost_usd, client_session_id, model FROM usage WHERE agent = ? AND timestamp >= ? "
            "ORDER BY timestamp DESC, id DESC LIMIT ?", (agent, iso_utc(since_ts), int(limit)))[::-1]

    def spend(self, since_ts):
        """USD spent since a time: {agent: usd} (None key = all agents)."""
        where, params = self._where(since_ts, None)
        rows = self.query("SELECT agent, SUM(estimated_cost_usd) AS usd FROM usage WHERE %s GROUP BY +agent"
                          % where, params)
        out = {r["agent"]: r["usd"] or 0.0 for r in rows}
        out[None] = sum(out.values())
        return out

    def claim_alert(self, key, payload):
        """Record a budget alert; False if any process already raised this one."""
        conn = _connect(self.path)
        try:
            cur = conn.execute("INSERT OR IGNORE INTO alerts (timestamp, key, payload) VALUES (?, ?, ?)",
                               (iso_utc(time.time()), key, json.dumps(payload)))
            return cur.rowcount == 1
        finally:
            conn.close()

    def mark_alert(self, key, delivered, detail):
        conn = _connect(self.path)
        try:
            conn.execute("UPDATE alerts SET delivered = ?, detail = ? WHERE key = ?", (delivered, detail, key))
        finally:
            conn.close()

    def alerts(self, since_ts, limit=100):
        return self.query("SELECT * FROM alerts WHERE timestamp >= ? ORDER BY id DESC LIMIT ?",
                          (iso_utc(since_ts), limit))

    @staticmethod
    def _where(since_ts, agent):
        where, params = "timestamp >= ?", [iso_utc(since_ts)]
        if agent:
            where += " AND agent = ?"
            params.append(agent)
        return where, params

    def agents(self):
        """Every agent name that has ever logged a turn."""
        # A skip-scan over idx_usage_agent_timestamp: one index seek per agent, not per row.
        return [r["agent"] for r in self.query(
            "WITH RECURSIVE a(agent) AS (SELECT MIN(agent) FROM usage UNION ALL "
            "SELECT (SELECT MIN(agent) FROM usage WHERE agent > a.agent) FROM a WHERE a.agent IS NOT NULL) "
            "SELECT agent FROM a WHERE agent IS NOT NULL")]

    def summary(self, hours=24):
        """Aggregates per agent over the last `hours` (earlier implementation's fields)."""
        out = []
        for r in self.aggregate(time.time() - hours * 3600, by=("agent",)):
            def avg(total, n):
                return round(r[total] / r[n], 1) if r[n] else None
            out.append({
                "agent": r["agent"], "turns": r["turns"],
                "total_input_tokens": r["input_tokens"], "total_output_tokens": r["output_tokens"],
                "total_cache_read": r["cache_read_tokens"], "total_cache_write": r["cache_write_tokens"],
                "total_cost": round(r["cost_usd"], 6) if r["cost_usd"] is not None else None,
                "avg_cost": round(r["cost_usd"] / r["priced_turns"], 6) if r["priced_turns"] else None,
                "avg_input_tokens": avg("input_tokens", "input_n"), "max_input_tokens": r["max_input_tokens"],
                "avg_system_chars": avg("sys_sum", "sys_n"), "avg_history_chars": avg("hist_sum", "hist_n"),
                "avg_skill_chars": avg("skill_sum", "skill_n"), "avg_base_prompt_chars": avg("base_sum", "base_n"),
                "failed_turns": r["failed_turns"], "unpriced_turns": r["unpriced_turns"],
                "turns_without_usage": r["turns_without_usage"],
                "first_turn": r["first_turn"], "last_turn": r["last_turn"]})
        return out
