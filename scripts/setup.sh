#!/usr/bin/env bash
# Creates ./.venv and installs trainboard into it (with the test extras when given "dev").
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "trainboard needs Python 3.11 or newer" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
extras=""
[ "${1:-}" = "dev" ] && extras="[dev]"
.venv/bin/pip install --quiet --disable-pip-version-check -e ".${extras}"
