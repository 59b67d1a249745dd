"""The README documents what the code does: every flag and environment variable, every
endpoint, every setting and every logged column (each has one home in the code; this
checks the README did not fall behind it)."""

import os
import re
import subprocess
import sys
import unittest

import tokenspy
import tokenspy_db

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as _fh:
    README = _fh.read()


class ReadmeMatchesCode(unittest.TestCase):
    def test_every_flag_and_environment_variable(self):
        for opt in tokenspy.OPTIONS:
            self.assertIn("`%s`" % opt.flag, README, opt.flag)
            for env in opt.env:
                self.assertIn("`%s`" % env, README, env)

    def test_every_endpoint(self):
        for method, path in tokenspy.ROUTES:
            self.assertRegex(README, r"`%s %s[`?]" % (method, re.escape(path)), "%s %s" % (method, path))

    def test_every_setting(self):
        for name in tokenspy.SETTING_RULES:
            self.assertIn("`%s`" % name, README, name)

    def test_every_logged_column(self):
        table = README[README.index("## What is logged per turn"):README.index("## Prices")]
        internal = {"ts", "toolset_id"}          # bookkeeping columns, not part of the API
        for column in tokenspy_db.USAGE_COLUMNS:
            if column not in internal:
                self.assertIn("`%s`" % column, table, column)

    def test_help_lists_every_flag(self):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "tokenspy.py"), "--help"],
                             capture_output=True, text=True, timeout=30).stdout
        for opt in tokenspy.OPTIONS:
            self.assertIn(opt.flag, out)

    def test_the_two_commands(self):
        self.assertIn("python3 tokenspy.py --port 9110", README)
        with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as fh:
            ci = fh.read()
        command = "python3 -m unittest discover -s tests -t ."
        self.assertIn(command, README)
        self.assertIn(command, ci)


if __name__ == "__main__":
    unittest.main()
