#!/usr/bin/env bash
# Installs the test dependencies (the venv with the dev extras, Chromium) and runs the whole suite.
# Extra arguments go to pytest. PostgreSQL tests use TRAINBOARD_TEST_POSTGRES_URL
# (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  $sudo apt-get install -y -q chromium
fi

exec .venv/bin/python -m pytest "$@"
