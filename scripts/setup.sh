#!/usr/bin/env bash
# Create (or reuse) .venv/ at the repo root and install inplace-ttt into it.
#   scripts/setup.sh          the library and the `ittt` command
#   scripts/setup.sh --moshi  plus Kyutai's moshi and the audio libraries (for Moshi models)
#   scripts/setup.sh --serve  plus transformers' server (`ittt serve`)
#   scripts/setup.sh --eval   plus lm-evaluation-harness (`ittt lm-eval`, `lm-eval --model hf`)
#   scripts/setup.sh --dev    plus the test tools, moshi, the server, lm-eval and espeak-ng (CI runs every test)
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
moshi=0
serve=0
harness=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1; moshi=1; serve=1; harness=1 ;;
        --moshi) moshi=1 ;;
        --serve) serve=1 ;;
        --eval) harness=1 ;;
        *) echo "setup.sh: unknown option $arg (use --dev, --moshi, --serve and/or --eval)" >&2; exit 2 ;;
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
extras=()
[ "$dev" = 1 ] && extras+=(dev)
# the `moshi` extra: what moshi's model code needs beyond our own requirements (einops,
# sentencepiece), the audio libraries of `ittt moshi-encode` / `moshi-infer` (soundfile, soxr) and
# what moshi's server needs for `ittt moshi-serve` (sphn, aiohttp)
[ "$moshi" = 1 ] && extras+=(moshi)
[ "$serve" = 1 ] && extras+=(serve)
[ "$harness" = 1 ] && extras+=(eval)
spec="."
[ "${#extras[@]}" -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"
"${pip[@]}" -e "$spec" "torch==2.13.0"
if [ "$moshi" = 1 ]; then
    # moshi 0.2.x declares torch<2.10, huggingface-hub<1.0, aiohttp<3.12 and packages that neither its
    # model code nor its server imports (bitsandbytes, sounddevice: its microphone client): install it
    # without its declared requirements (the ones we use come with the extra above)
    "${pip[@]}" --no-deps "moshi==0.2.13"
fi
if [ "$dev" = 1 ] && ! command -v espeak-ng >/dev/null; then
    # the speech tests speak their conversations with espeak-ng (a Debian package)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null
    else
        echo "setup.sh: install espeak-ng (apt-get install espeak-ng) for the speech tests; they are skipped without it" >&2
    fi
fi
