#!/usr/bin/env bash
# Create (or reuse) .venv/ at the repo root and install inplace-ttt into it.
#   scripts/setup.sh          the library and the `ittt` command
#   scripts/setup.sh --dev    plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
if [ ! -x .venv/bin/python ]; then
    py=$(command -v python3.11 || command -v python3)
    "$py" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: this machine carries the 2.13.0 CPU wheel; a looser requirement
# resolved later would pull a multi-GB CUDA build
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".${extras}"
