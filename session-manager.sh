#!/usr/bin/env bash
# Token Spy session manager: one pass over every agent that has a sessions dir.
#
#   - resets a session whose status is reset_recommended (archives the file: renamed, never deleted)
#   - archives sessions that are not in sessions.json and have been idle --inactive-minutes (60)
#   - keeps at most --max-sessions (5) session files per agent, the newest
#   - deletes archived session files older than --retention-days (7)
#
# Run by tokenspy.timer every poll_interval_minutes (or from cron). All logic lives in
# `tokenspy.py manage`, which reads the same database, settings and AGENT_SESSION_DIRS as
# the proxy; this wrapper only finds Python and tokenspy.py. Extra arguments are passed on,
# e.g. `session-manager.sh --dry-run` or `session-manager.sh --db /var/lib/tokenspy/usage.db`.
set -euo pipefail

main() {
  local here python
  here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
  python="${TOKENSPY_PYTHON:-python3}"
  if ! command -v "${python}" >/dev/null 2>&1; then
    echo "session-manager.sh: error: ${python} not found; set TOKENSPY_PYTHON to a Python 3.9+ interpreter" >&2
    exit 2
  fi
  exec "${python}" "${here}/tokenspy.py" manage "$@"
}

main "$@"
