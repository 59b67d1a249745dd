#!/usr/bin/env python3
"""Token Spy overhead benchmark: one workload DIRECT to a fake provider and THROUGH Token Spy.

    python3 bench/benchmark.py [--quick] [--json]     # ~40 s (quick ~15 s) on 2 cores

Three processes: the fake upstream (tests/fake_upstream.py, via --serve-fake), Token Spy
(tokenspy.py --port P --db TMP --upstream FAKE --log-level warning; full SQLite logging,
the default) and this client. They share the cores, as on a busy laptop. Method:

1. Latency: sequential POST /v1/messages on one keep-alive http.client connection per
   target, a ~2 KB realistic Anthropic request and a ~1 MB one (many messages); the
   fake answers its recorded non-stream fixture. After a warm-up, direct and proxy
   samples alternate in blocks so drift hits both. Added = proxy minus direct percentile.
2. SSE relay lag: GET /sse?events=200&size=200&interval=0.002. Each payload starts with
   the fake's perf_counter() (CLOCK_MONOTONIC) taken just before its write, so per event
   lag = perf_counter() - stamp. Median and p95, direct vs proxy.
3. Throughput: N threads here, each with its own keep-alive connection, send the 2 KB
   request for a fixed time after a 1 s warm-up. Also shown: rows the recorder had not
   written yet when the load stopped (a backlog means the ratio flatters the proxy).
4. CPU and memory: utime+stime of Token Spy (/proc/PID/stat) around a batch of
   sequential 2 KB requests, up to the moment the recorder has written every row; VmRSS
   (/proc/PID/status) after the whole run.
Finally /api/summary?hours=1 must count exactly the metered requests sent through it.
FakeUpstream keeps every request (body included) in .requests, which would grow past
800 MB in this run, so --serve-fake only counts them (see _BenchUpstream).
"""

import argparse
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADERS = {"content-type": "application/json", "x-api-key": "sk-ant-bench-000",
           "anthropic-version": "2023-06-01", "user-agent": "tokenspy-bench/1.0",
           "x-claude-code-session-id": "bench-session"}
FILLER = ("Let me look at src/app/handlers.py and the failing test in tests/test_api.py; the "
          "traceback says KeyError: 'session' when the cache is cold, so I will add a guard. ")


def serve_fake():
    """--serve-fake: run the fake provider, print its URL, stop when stdin closes."""
    sys.path.insert(0, ROOT)
    from tests.fake_upstream import FakeUpstream, Reply

    class _BenchUpstream(FakeUpstream):
        count = 0

        def _record(self, rec):          # count instead of keeping every body forever
            with self._lock:
                self.count += 1

        def default_reply(self, rec):
            if rec.path == "/_bench/stats":
                return Reply(200, [("content-type", "application/json")],
                             json.dumps({"requests": self.count, "connections": self.connections}).encode())
            return super().default_reply(rec)

    fake = _BenchUpstream().start()
    print(fake.url, flush=True)
    sys.stdin.readline()
    fake.stop()


def make_body(target_bytes):
    """A realistic Anthropic Messages request of about target_bytes (JSON)."""
    req = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 8192, "stream": False,
           "metadata": {"user_id": "user_bench_0001"},
           "system": [{"type": "text", "text": "You are a coding agent. Be concise. " + FILLER * 2,
                       "cache_control": {"type": "ephemeral"}}],
           "tools": [{"name": "read_file", "description": "Read a file from the workspace.",
                      "input_schema": {"type": "object", "properties": {"path": {"type": "string"}},
                                       "required": ["path"]}}],
           "messages": [{"role": "user", "content": "The API test fails, please fix it."}]}
    size = len(json.dumps(req))
    while size < target_bytes:
        role = "assistant" if len(req["messages"]) % 2 else "user"
        n = min(2000, max(1, target_bytes - size - 60))
        text = (FILLER * (n // len(FILLER) + 1))[:n]
        req["messages"].append({"role": role, "content": [{"type": "text", "text": text}]})
        size = len(json.dumps(req))
    if req["messages"][-1]["role"] != "user":
        req["messages"].append({"role": "user", "content": "go on"})
    return json.dumps(req).encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else float("nan")


def get_json(addr, path):
    conn = http.client.HTTPConnection(*addr, timeout=30)
    conn.request("GET", path)
    data = conn.getresponse().read()
    conn.close()
    return json.loads(data)


def post(conn, body):
    conn.request("POST", "/v1/messages", body, HEADERS)
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        raise RuntimeError("HTTP %d from %s:%d" % (resp.status, conn.host, conn.port))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as fh:
        return next(int(ln.split()[1]) / 1024.0 for ln in fh if ln.startswith("VmRSS:"))


def note(msg):
    print(msg, file=sys.stderr, flush=True)


class Bench:
    """Starts the fake upstream and Token Spy; each method measures one figure."""

    def __init__(self, quick):
        self.quick = quick
        self.sent_metered = 0              # POST /v1/messages sent through the proxy
        self.tmp = tempfile.TemporaryDirectory(prefix="tokenspy-bench-")
        self.fake = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve-fake"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        url = self.fake.stdout.readline().strip()
        self.direct = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        port = free_port()
        self.proxy = ("127.0.0.1", port)
        self.spy = subprocess.Popen([sys.executable, os.path.join(ROOT, "tokenspy.py"), "--port", str(port),
                                     "--db", os.path.join(self.tmp.name, "usage.db"), "--upstream", url,
                                     "--log-level", "warning"], cwd=ROOT)
        for _ in range(300):
            try:
                get_json(self.proxy, "/health")
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("Token Spy did not start on port %d" % port)

    def close(self):
        self.spy.terminate()
        self.fake.stdin.close()
        self.spy.wait(10), self.fake.wait(10), self.tmp.cleanup()

    def turns_logged(self):
        return sum(r["turns"] for r in get_json(self.proxy, "/api/summary?hours=1"))

    def wait_logged(self, timeout=60):
        """Until the recorder has written a row for every metered request sent so far."""
        deadline = time.time() + timeout
        while self.turns_logged() < self.sent_metered and time.time() < deadline:
            time.sleep(0.05)

    def latency(self, body, samples, warmup, blocks=10):
        conns = {t: http.client.HTTPConnection(*addr, timeout=60)
                 for t, addr in (("direct", self.direct), ("proxy", self.proxy))}
        times = {"direct": [], "proxy": []}
        for conn in conns.values():
            for _ in range(warmup):
                post(conn, body)
        self.sent_metered += warmup
        self.wait_logged()
        for _ in range(blocks):
            for t, conn in conns.items():
                for _ in range(samples // blocks):
                    t0 = time.perf_counter()
                    post(conn, body)
                    times[t].append((time.perf_counter() - t0) * 1000)
        self.sent_metered += len(times["proxy"])
        for conn in conns.values():
            conn.close()
        out = {"bytes": len(body)}
        for q in ("p50", "p99"):
            d, p = pct(times["direct"], int(q[1:]) / 100), pct(times["proxy"], int(q[1:]) / 100)
            out.update({"direct_" + q: d, "proxy_" + q: p, "added_" + q: p - d})
        self.wait_logged()
        return out

    def sse(self, streams):
        lags = {"direct": [], "proxy": []}
        for _ in range(streams):
            for t, addr in (("direct", self.direct), ("proxy", self.proxy)):
                conn = http.client.HTTPConnection(*addr, timeout=30)
                conn.request("GET", "/sse?events=200&size=200&interval=0.002")
                resp, line = conn.getresponse(), b"-"
                while line:
                    line = resp.readline()
                    now = time.perf_counter()
                    if line.startswith(b"data: "):
                        lags[t].append((now - float(line[6:].split(b" ", 1)[0])) * 1000)
                conn.close()
        out = {"events": len(lags["proxy"])}
        for q, f in (("median", 0.5), ("p95", 0.95)):
            d, p = pct(lags["direct"], f), pct(lags["proxy"], f)
            out.update({"direct_" + q: d, "proxy_" + q: p, "added_" + q: p - d})
        return out

    def load(self, addr, concurrency, seconds, body, warm=1.0):
        """Requests/s with `concurrency` keep-alive clients; returns (rps, requests sent)."""
        counts, sent, errors = [0] * concurrency, [0] * concurrency, []
        start = time.perf_counter()
        measure_from, stop_at = start + warm, start + warm + seconds

        def worker(i):
            conn = http.client.HTTPConnection(*addr, timeout=60)
            try:
                while time.perf_counter() < stop_at:
                    sent[i] += 1
                    post(conn, body)
                    if time.perf_counter() >= measure_from:
                        counts[i] += 1
            except Exception as exc:
                errors.append(exc)
            finally:
                conn.close()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
        [th.start() for th in threads]
        [th.join() for th in threads]
        if errors:
            raise RuntimeError("%d client errors, first: %r" % (len(errors), errors[0]))
        return sum(counts) / seconds, sum(sent)

    def throughput(self, body, seconds):
        out = {}
        for c in (16, 64):
            direct, _ = self.load(self.direct, c, seconds, body)
            proxy, sent = self.load(self.proxy, c, seconds, body)
            self.sent_metered += sent
            backlog, t0 = self.sent_metered - self.turns_logged(), time.perf_counter()
            self.wait_logged()             # rows the recorder had not written yet when the load stopped
            out["c%d" % c] = {"direct_rps": direct, "proxy_rps": proxy, "ratio_pct": 100.0 * proxy / direct,
                              "unlogged_at_end": backlog, "drain_s": time.perf_counter() - t0}
            note("  c=%d: direct %.0f req/s, proxy %.0f req/s, %d rows still to write at the end"
                 % (c, direct, proxy, backlog))
        return out

    def cpu(self, body, n):
        conn = http.client.HTTPConnection(*self.proxy, timeout=60)
        self.wait_logged()
        before = cpu_seconds(self.spy.pid)
        for _ in range(n):
            post(conn, body)
        conn.close()
        self.sent_metered += n
        self.wait_logged()                 # the recorder's parsing and writing count too
        used = cpu_seconds(self.spy.pid) - before
        return {"requests": n, "cpu_s": used, "cpu_s_per_1k": used * 1000.0 / n}

    def run(self):
        small, big = make_body(2048), make_body(1 << 20)
        q = self.quick
        res = {"mode": "quick" if q else "full"}
        note("latency 2 KB, 1 MB ...")
        res["latency_2kb"] = self.latency(small, 500 if q else 2000, 100 if q else 300)
        res["latency_1mb"] = self.latency(big, 50 if q else 200, 5 if q else 20)
        note("SSE relay lag ...")
        res["sse"] = self.sse(1 if q else 5)
        note("throughput ...")
        res["throughput"] = self.throughput(small, 2.0 if q else 5.0)
        note("CPU per request ...")
        res["cpu"] = self.cpu(small, 1000 if q else 3000)
        res["rss_mb"] = rss_mb(self.spy.pid)
        res["turns_logged"], res["metered_sent"] = self.turns_logged(), self.sent_metered
        res["fake_upstream"] = get_json(self.direct, "/_bench/stats")
        return res


def checks(res):
    """(name, measured, goal, op, met) for each target of the issue."""
    l2, l1 = res["latency_2kb"], res["latency_1mb"]
    rows = [("added p50, 2 KB (ms)", l2["added_p50"], 0.6, "<="),
            ("added p99, 2 KB (ms)", l2["added_p99"], 1.5, "<="),
            ("added p50, 1 MB (ms)", l1["added_p50"], 1.0, "<="),
            ("SSE added lag, median (ms)", res["sse"]["added_median"], 0.15, "<="),
            ("throughput c=64, proxy/direct (%)", res["throughput"]["c64"]["ratio_pct"], 30, ">="),
            ("CPU s per 1,000 requests", res["cpu"]["cpu_s_per_1k"], 0.6, "<="),
            ("RSS after run (MB)", res["rss_mb"], 35, "<=")]
    return [(n, v, g, op, v <= g if op == "<=" else v >= g) for n, v, g, op in rows]


def report(res):
    l2, l1, s = res["latency_2kb"], res["latency_1mb"], res["sse"]
    print("Token Spy benchmark (%s mode; full SQLite logging)\n" % res["mode"])
    print("%-34s %10s %10s %10s" % ("", "direct", "proxy", "added"))
    for name, d, qs in (("2 KB POST (%d B)" % l2["bytes"], l2, ("p50", "p99")),
                        ("1 MB POST (%d B)" % l1["bytes"], l1, ("p50", "p99")),
                        ("SSE lag (%d events)" % s["events"], s, ("median", "p95"))):
        for q in qs:
            print("%-34s %10.3f %10.3f %+10.3f" % ("%s %s ms" % (name, q), d["direct_" + q],
                                                 d["proxy_" + q], d["added_" + q]))
    for c, t in sorted(res["throughput"].items()):
        print("%-34s %10.0f %10.0f %9.1f%%   (%d rows unwritten at the end, %.1f s to drain)"
              % ("req/s, concurrency %s" % c[1:], t["direct_rps"], t["proxy_rps"], t["ratio_pct"],
                 t["unlogged_at_end"], t["drain_s"]))
    cpu = res["cpu"]
    print("\nproxy CPU: %.2f s for %d requests = %.3f s per 1,000; RSS %.1f MB"
          % (cpu["cpu_s"], cpu["requests"], cpu["cpu_s_per_1k"], res["rss_mb"]))
    ok = res["turns_logged"] == res["metered_sent"]
    print("turns logged (/api/summary?hours=1): %d of %d metered requests sent -> %s"
          % (res["turns_logged"], res["metered_sent"], "match" if ok else "MISMATCH"))
    print("\n%-36s %10s %10s  %s" % ("target", "measured", "goal", "status"))
    for name, value, goal, op, met in checks(res):
        print("%-36s %10.3f %7s %-4g %s" % (name, value, op, goal, "met" if met else "NOT MET"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter run (~30 s)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_fake:
        return serve_fake()
    bench = Bench(args.quick)
    try:
        res = bench.run()
    finally:
        bench.close()
    if args.json:
        res["checks"] = [dict(zip(("name", "value", "goal", "op", "met"), c)) for c in checks(res)]
        print(json.dumps(res, indent=2))
    else:
        report(res)
    return 0 if res["turns_logged"] == res["metered_sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
