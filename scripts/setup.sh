#!/usr/bin/env bash
# Create (or reuse) .venv/ at the repo root and install inplace-ttt into it.
#   scripts/setup.sh          the library and the `ittt` command
#   scripts/setup.sh --moshi  plus Kyutai's moshi (for Moshi models)
#   scripts/setup.sh --dev    plus the test tools and moshi (CI runs the Moshi tests)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
moshi=0
for arg in "$@"; do
    case "$arg" in
        --dev) extras="[dev]"; moshi=1 ;;
        --moshi) moshi=1 ;;
        *) echo "setup.sh: unknown option $arg (use --dev and/or --moshi)" >&2; exit 2 ;;
    esac
done
if [ ! -x .venv/bin/python ]; then
    py=$(command -v python3.11 || command -v python3)
    "$py" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: this machine carries the 2.13.0 CPU wheel; a looser requirement
# resolved later would pull a multi-GB CUDA build
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".${extras}"
if [ "$moshi" = 1 ]; then
    # moshi 0.2.x declares torch<2.10, huggingface-hub<1.0 and audio/server packages
    # (bitsandbytes, sounddevice, sphn, aiohttp) that its model code does not import: install it
    # without its declared requirements, then the two its model code needs that we lack
    # (torch, numpy, safetensors and huggingface_hub come with inplace-ttt)
    "${pip[@]}" --no-deps "moshi==0.2.13"
    "${pip[@]}" "einops>=0.7,<0.9" "sentencepiece>=0.2,<0.3" "torch==2.13.0"
fi
