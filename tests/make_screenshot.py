"""Save docs/dashboard.png: the dashboard with realistic data, 1400 px wide, full page.

    python3 tests/make_screenshot.py [--out docs/dashboard.png] [--width 1400] [--serve SECONDS]

Starts a FakeUpstream and a Token Spy on a temporary database, fills it the way
tests/test_dashboard_roadmap.py does (plus a day of synthetic history: tools, stop
reasons, an automatic session reset, budgets over and in warning), opens /dashboard in
headless Chromium (Chart.js from the local copy, as in the tests) and saves the page.
With --serve, it then keeps Token Spy running that many seconds for a look by hand.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests import test_dashboard as td  # noqa: E402
from tests.test_dashboard_roadmap import RoadmapData  # noqa: E402


class Demo(RoadmapData):
    history_rows = 900
    history_end_ago = 240
    with_probe = False

    def runTest(self):                  # pragma: no cover - not collected as a test
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(td.ROOT, "docs", "dashboard.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--fragment", default="#range=24h")
    parser.add_argument("--serve", type=float, default=0)
    args = parser.parse_args(argv)
    reason = td.skip_reason()
    if reason:
        print("cannot take the screenshot: " + reason, file=sys.stderr)
        return 1
    demo = Demo()
    demo.setUp()
    try:
        with open(td.chartjs_file(), "rb") as fh:
            chartjs = fh.read()
        browser = td.browser()
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        errors = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route(td.CDN_GLOB, lambda route: route.fulfill(status=200, body=chartjs, headers={
            "Content-Type": "application/javascript", "Access-Control-Allow-Origin": "*"}))
        url = "http://127.0.0.1:%d/dashboard%s" % (demo.app.port, args.fragment)
        page.goto(url)
        page.wait_for_selector("body[data-loaded]")
        page.wait_for_function("() => Number(document.body.dataset.roadmap || 0) > 0")
        # the session history of the agent whose session was reset automatically
        draws = page.get_attribute("section[data-view='session-history']", "data-draws")
        page.select_option("#history-agent", "openclaw")
        page.wait_for_function("n => document.querySelector(\"section[data-view='session-history']\").dataset.draws !== n",
                               arg=draws)
        page.wait_for_timeout(300)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        print("saved %s (%s)" % (args.out, url))
        if errors:
            print("page errors: %s" % errors, file=sys.stderr)
        if args.serve:
            print("serving %s for %.0f s" % (url, args.serve))
            time.sleep(args.serve)
        page.close()
    finally:
        demo.tearDown()
        td.tearDownModule()
    return 0


if __name__ == "__main__":
    sys.exit(main())
