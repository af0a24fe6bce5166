#!/usr/bin/env bash
# Installs trainboard into ./.venv and starts the dashboard with one worker (trainboard up).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/trainboard up "$@"
