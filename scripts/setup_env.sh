#!/usr/bin/env bash
# Create .venv at the repository root (Python 3.11 preferred) and install the requirements into it.
# Usage: bash scripts/setup_env.sh [--test]   (--test also installs the test requirements)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$root/requirements.txt"
[ "${1:-}" = "--test" ] && req="$root/requirements-test.txt"
if [ ! -x "$root/.venv/bin/python" ]; then
  py="$(command -v python3.11 || command -v python3)"
  "$py" -m venv "$root/.venv"
fi
stamp="$root/.venv/.installed-$(basename "$req")-$(cat "$root"/requirements*.txt | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  touch "$stamp"
fi
