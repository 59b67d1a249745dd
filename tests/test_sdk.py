"""The official SDKs through Token Spy: they must work unchanged, and the logged usage must
equal the usage the SDK itself saw. Skipped, with the reason, where an SDK is missing
(`.ci/run` installs both: pip install anthropic openai)."""

import unittest

from tests.support import ProxyTestCase
from tests.fake_upstream import anthropic_error, openai_error

try:
    import anthropic
except ImportError:  # pragma: no cover - depends on the machine
    anthropic = None
try:
    import openai
except ImportError:  # pragma: no cover
    openai = None


@unittest.skipIf(anthropic is None, "the anthropic SDK is not installed (pip install anthropic)")
class AnthropicSDK(ProxyTestCase):
    fake_kwargs = {"split": 9, "gzip_json": True}

    def client(self, **kw):
        return anthropic.Anthropic(base_url=self.app.url, api_key="sk-ant-test", max_retries=0, **kw)

    def assert_logged(self, row, usage):
        self.assertEqual(row["input_tokens"], usage.input_tokens)
        self.assertEqual(row["output_tokens"], usage.output_tokens)
        self.assertEqual(row["cache_read_tokens"], usage.cache_read_input_tokens)
        self.assertEqual(row["cache_write_tokens"], usage.cache_creation_input_tokens)
        self.assertEqual(row["cache_write_1h_tokens"], usage.cache_creation.ephemeral_1h_input_tokens)
        self.assertEqual(row["usage_source"], "provider")

    def test_create_gzip_json(self):
        msg = self.client().messages.create(model="claude-sonnet-4-6", max_tokens=16,
                                            messages=[{"role": "user", "content": "hello"}])
        row = self.rows(expect=1)[0]
        self.assert_logged(row, msg.usage)
        self.assertEqual(row["stop_reason"], msg.stop_reason)
        self.assertEqual(row["response_model"], msg.model)
        self.assertEqual(row["tools_called"], [b.name for b in msg.content if b.type == "tool_use"])

    def test_stream_helper_accumulates_the_same_usage(self):
        with self.client().messages.stream(model="claude-sonnet-4-6", max_tokens=16,
                                           messages=[{"role": "user", "content": "hello"}]) as stream:
            final = stream.get_final_message()
        row = self.rows(expect=1)[0]
        self.assert_logged(row, final.usage)
        self.assertEqual(row["stream"], 1)
        self.assertEqual(row["stop_reason"], final.stop_reason)
        # The SDK saw the upstream's request id through the proxy.
        self.assertEqual(row["request_id"], stream.response.headers.get("request-id"))

    def test_overloaded_stream_raises_the_typed_error(self):
        self.fake.enqueue(anthropic_error(529, "overloaded_error", "Overloaded"))
        with self.assertRaises(anthropic.InternalServerError) as ctx:
            with self.client().messages.stream(model="claude-sonnet-4-6", max_tokens=16,
                                               messages=[{"role": "user", "content": "hi"}]) as stream:
                stream.get_final_message()
        self.assertEqual(ctx.exception.status_code, 529)
        row = self.rows(expect=1)[0]
        self.assertEqual(row["status"], 529)
        self.assertIsNone(row["input_tokens"])
        self.assertIn("overloaded_error", row["error"])

    def test_beta_path_and_count_tokens(self):
        client = self.client()
        client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=16,
                                    messages=[{"role": "user", "content": "hi"}], betas=["context-1m-2025-08-07"])
        count = client.messages.count_tokens(model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(count.input_tokens, 2095)
        rows = self.rows(expect=1)           # count_tokens is relayed, not a turn
        sent = [r for r in self.fake.requests if r.path.startswith("/v1/messages")]
        self.assertIn("context-1m-2025-08-07", dict((k.lower(), v) for k, v in sent[0].headers)["anthropic-beta"])
        self.assertEqual(rows[0]["path"], sent[0].path)


@unittest.skipIf(openai is None, "the openai SDK is not installed (pip install openai)")
class OpenAISDK(ProxyTestCase):
    fake_kwargs = {"split": 5}

    def client(self):
        return openai.OpenAI(base_url=self.app.url + "/v1", api_key="sk-test", max_retries=0)

    def test_chat_stream_with_usage(self):
        stream = self.client().chat.completions.create(
            model="gpt-5", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hello"}])
        chunks = list(stream)
        usage = chunks[-1].usage
        row = self.rows(expect=1)[0]
        cached = usage.prompt_tokens_details.cached_tokens
        self.assertEqual(row["input_tokens"], usage.prompt_tokens - cached)
        self.assertEqual(row["cache_read_tokens"], cached)
        self.assertEqual(row["output_tokens"], usage.completion_tokens)
        self.assertEqual(row["reasoning_tokens"], usage.completion_tokens_details.reasoning_tokens)
        self.assertEqual(row["stop_reason"], "tool_calls")

    def test_chat_stream_without_usage_is_missing_not_zero(self):
        list(self.client().chat.completions.create(model="gpt-5", stream=True,
                                                    messages=[{"role": "user", "content": "hello"}]))
        row = self.rows(expect=1)[0]
        self.assertEqual(row["usage_source"], "missing")
        self.assertIsNone(row["input_tokens"])
        self.assertIsNone(row["estimated_cost_usd"])

    def test_inject_stream_usage_flag(self):
        self.restart_proxy(["--upstream", self.fake.url, "--inject-stream-usage"])
        chunks = list(self.client().chat.completions.create(model="gpt-5", stream=True,
                                                             messages=[{"role": "user", "content": "hello"}]))
        self.assertIsNotNone(chunks[-1].usage)             # the SDK accepts the extra chunk
        row = self.rows(expect=1)[0]
        self.assertEqual(row["usage_source"], "provider")
        self.assertEqual(row["output_tokens"], chunks[-1].usage.completion_tokens)

    def test_responses_stream(self):
        with self.client().responses.stream(model="gpt-5", input="hello") as stream:
            final = stream.get_final_response()
        row = self.rows(expect=1)[0]
        self.assertEqual(row["input_tokens"] + row["cache_read_tokens"] + row["cache_write_tokens"],
                         final.usage.input_tokens)
        self.assertEqual(row["output_tokens"], final.usage.output_tokens)
        self.assertEqual(row["stop_reason"], final.status)

    def test_rate_limit_error_reaches_the_sdk(self):
        self.fake.enqueue(openai_error(429, "rate_limit_exceeded", "Rate limit reached", retry_after=3))
        with self.assertRaises(openai.RateLimitError) as ctx:
            self.client().chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(ctx.exception.response.headers.get("retry-after"), "3")
        self.assertEqual(ctx.exception.code, "rate_limit_exceeded")
        self.assertEqual(self.rows(expect=1)[0]["status"], 429)


if __name__ == "__main__":
    unittest.main()
