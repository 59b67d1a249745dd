"""Real coding agents through Token Spy: Claude Code and Codex, installed from the npm
registry, run non-interactively against the fake upstream on loopback.

What they send is what Token Spy must handle: many tool definitions, `?beta=true`,
`Accept-Encoding: gzip, deflate, br, zstd` (Claude Code) and `zstd,gzip` (Codex), session
id headers, and Codex's WebSocket attempt before HTTPS. Skipped with a reason when the
agents are not installed; `.ci/run` installs them into .ci/agents (or set
TOKENSPY_AGENTS_BIN to a folder holding `claude` and `codex`).
"""

import json
import os
import shutil
import subprocess
import time
import unittest

from tests.fake_upstream import Reply
from tests.support import ROOT, ProxyTestCase


def _find(name):
    for folder in (os.environ.get("TOKENSPY_AGENTS_BIN"), os.path.join(ROOT, ".ci", "agents", "node_modules", ".bin")):
        if folder and os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    return shutil.which(name)


CLAUDE, CODEX = _find("claude"), _find("codex")


def sse(events):
    return b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode()) for name, data in events)


def anthropic_text_stream(text, model="claude-opus-5-5"):
    usage = {"input_tokens": 1200, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 9000,
             "cache_creation": {"ephemeral_5m_input_tokens": 3000, "ephemeral_1h_input_tokens": 0},
             "output_tokens": 1}
    msg = {"id": "msg_e2e", "type": "message", "role": "assistant", "model": model, "content": [],
           "stop_reason": None, "stop_sequence": None, "usage": usage}
    return sse([
        ("message_start", {"type": "message_start", "message": msg}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 7}}),
        ("message_stop", {"type": "message_stop"}),
    ])


def responses_text_stream(text, model="gpt-test"):
    item = {"type": "message", "id": "msg_e2e", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    resp = {"id": "resp_e2e", "object": "response", "status": "in_progress", "model": model, "output": []}
    done = dict(resp, status="completed", output=[item], usage={
        "input_tokens": 5000, "input_tokens_details": {"cached_tokens": 4096, "cache_write_tokens": 0},
        "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 5012})
    return sse([
        ("response.created", {"type": "response.created", "response": resp, "sequence_number": 0}),
        ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                        "item": dict(item, status="in_progress", content=[]), "sequence_number": 1}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_e2e", "output_index": 0,
                                        "content_index": 0, "delta": text, "sequence_number": 2}),
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item,
                                       "sequence_number": 3}),
        ("response.completed", {"type": "response.completed", "response": done, "sequence_number": 4}),
    ])


def stream_reply(body):
    half = len(body) // 2
    return Reply(200, [("content-type", "text/event-stream; charset=utf-8"), ("request-id", "req_e2e")],
                 chunks=[body[:half], body[half:]])


def agent_env(home, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "CLAUDE", "CODEX"))}
    env.update(HOME=home, DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1", DISABLE_ERROR_REPORTING="1",
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", NO_COLOR="1")
    env.update(extra)
    return env


@unittest.skipIf(CLAUDE is None, "Claude Code is not installed (npm install @anthropic-ai/claude-code; .ci/run does)")
class ClaudeCode(ProxyTestCase):
    agent = "claude-e2e"

    def test_print_mode_turn_is_metered(self):
        for _ in range(4):                      # any extra call also gets a plain answer
            self.fake.enqueue(stream_reply(anthropic_text_stream("PONG")))
        home = os.path.join(self.tmpdir, "home")
        os.makedirs(home)
        proc = subprocess.run([CLAUDE, "-p", "say PONG"], env=agent_env(
            home, ANTHROPIC_BASE_URL=self.app.url, ANTHROPIC_API_KEY="sk-ant-e2e"),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, cwd=self.tmpdir)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn("PONG", proc.stdout)
        sent = [r for r in self.fake.requests if r.path.startswith("/v1/messages")]
        self.assertTrue(sent, "Claude Code sent nothing upstream")
        headers = {k.lower(): v for k, v in sent[0].headers}
        self.assertEqual(headers.get("accept-encoding"), "gzip, deflate")   # br, zstd narrowed away
        self.assertEqual(headers.get("x-api-key"), "sk-ant-e2e")
        rows = self.rows(expect=len(sent))
        row = rows[0]
        self.assertEqual(row["path"], sent[0].path)                          # ?beta=true kept
        self.assertEqual(row["usage_source"], "provider")
        self.assertEqual((row["input_tokens"], row["cache_write_tokens"], row["cache_read_tokens"],
                          row["output_tokens"]), (1200, 3000, 9000, 7))
        self.assertIsNotNone(row["estimated_cost_usd"])
        self.assertEqual(row["client_session_id"], headers.get("x-claude-code-session-id"))
        self.assertGreaterEqual(row["tool_count"], 5)
        self.assertGreater(row["system_prompt_total_chars"], 1000)


@unittest.skipIf(CODEX is None, "Codex is not installed (npm install @openai/codex; .ci/run does)")
class Codex(ProxyTestCase):
    agent = "codex-e2e"

    def run_codex(self, websockets=False):
        home = os.path.join(self.tmpdir, "codex-home")
        os.makedirs(home, exist_ok=True)
        with open(os.path.join(home, "config.toml"), "w") as fh:
            fh.write('model = "gpt-test"\nmodel_provider = "spy"\ncheck_for_update_on_startup = false\n'
                     '[analytics]\nenabled = false\n[features]\nplugins = false\napps = false\nremote_plugin = false\n'
                     '[model_providers.spy]\nname = "spy"\nbase_url = "%s/v1"\nenv_key = "SPY_KEY"\n'
                     'wire_api = "responses"\n%s' % (self.app.url, "supports_websockets = true\n" if websockets else ""))
        started = time.time()
        proc = subprocess.run([CODEX, "exec", "--skip-git-repo-check", "--ephemeral", "say PONG"],
                              env=agent_env(home, CODEX_HOME=home, SPY_KEY="sk-e2e"), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=180, cwd=self.tmpdir)
        return proc, time.time() - started

    def test_exec_turn_is_metered(self):
        for _ in range(3):
            self.fake.enqueue(stream_reply(responses_text_stream("PONG")))
        proc, _ = self.run_codex()
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn("PONG", proc.stdout)
        sent = [r for r in self.fake.requests if r.path == "/v1/responses"]
        self.assertTrue(sent)
        headers = {k.lower(): v for k, v in sent[0].headers}
        self.assertEqual(headers.get("accept-encoding"), "gzip")             # zstd narrowed away
        self.assertEqual(headers.get("authorization"), "Bearer sk-e2e")
        row = self.rows(expect=len(sent))[0]
        self.assertEqual((row["api"], row["usage_source"]), ("responses", "provider"))
        self.assertEqual((row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]), (904, 4096, 12))
        self.assertEqual(row["client_session_id"], headers.get("session-id") or headers.get("session_id"))
        self.assertGreaterEqual(row["tool_count"], 1)

    def test_websocket_attempt_falls_back_to_https_at_once(self):
        for _ in range(3):
            self.fake.enqueue(stream_reply(responses_text_stream("PONG")))
        proc, took = self.run_codex(websockets=True)
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn("PONG", proc.stdout)
        self.assertNotIn("Reconnecting", proc.stderr)         # a 426 means no retry loop
        self.assertFalse([r for r in self.fake.requests if r.method == "GET"], "the upgrade was forwarded")
        self.assertTrue([r for r in self.fake.requests if r.path == "/v1/responses" and r.method == "POST"])
        self.assertLess(took, 60)


if __name__ == "__main__":
    unittest.main()
