#!/usr/bin/env bash
# Create .venv at the repository root (Python 3.11 preferred) and install requirements.txt,
# requirements-test.txt and (without dependencies: headers only) requirements-headers.txt into it.
# Idempotent: a second run with unchanged requirements installs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$root/.venv/bin/python" ]; then
  py="$(command -v python3.11 || command -v python3)"
  "$py" -m venv "$root/.venv"
fi
stamp="$root/.venv/.installed-$(cat "$root"/requirements*.txt | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/requirements-test.txt"
  "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$root/requirements-headers.txt"
  touch "$stamp"
fi
