#!/usr/bin/env bash
# The one install recipe: `make install`, CI and the container image all run this script.
# Usage: scripts/install.sh [PYTHON]   (PYTHON defaults to .venv/bin/python, created if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
if [ "${1:-}" != "" ]; then
  PY="$1"
else
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
fi

# Skip everything when the inputs are unchanged since the last successful install.
STAMP_DIR="$(dirname "$(dirname "$PY")")"
STAMP="$STAMP_DIR/.mpcformer-install-stamp"
HASH="$(cat pyproject.toml constraints.txt scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  echo "install: up to date ($PY)"
  exit 0
fi

PIP="$PY -m pip --disable-pip-version-check"
# pip's and the build backend's output goes to a log: on success the user sees only pip's ERROR
# lines (a dependency conflict is reported with exit status 0); on failure the end of the log.
LOG="$(mktemp "${TMPDIR:-/tmp}/mpcformer-install.XXXXXX")"
step() {
  local what="$1"
  shift
  echo "install: $what"
  if ! "$@" >>"$LOG" 2>&1; then
    echo "install: failed: $*" >&2
    tail -n 40 "$LOG" >&2
    echo "install: the whole log is $LOG" >&2
    exit 1
  fi
}
step "pip, setuptools, wheel" $PIP install -q --upgrade pip setuptools wheel
# 1. torch first, pinned (the constraints file is the single source of the pin).
step "torch (CPU build, pinned)" $PIP install -q -c constraints.txt "torch==$(sed -n 's/^torch==//p' constraints.txt)"
# 2. CrypTen 0.4.1 without its metadata deps (it requires the dead `sklearn` package);
#    its real imports are declared in pyproject.toml.
step "CrypTen 0.4.1" $PIP install -q --no-deps crypten==0.4.1
# 3. The project with its real dependencies and the test tools.
step "mpcformer and its dependencies" $PIP install -q -c constraints.txt -e ".[test]"
grep "^ERROR" "$LOG" >&2 || true
rm -f "$LOG"
echo "$HASH" > "$STAMP"
echo "install: done ($PY)"
