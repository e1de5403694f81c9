#!/usr/bin/env bash
# Set up .venv/ at the repo root with the pinned dependency set; safe to run any number of times.
#
# Idempotent: a stamp in .venv records a digest of what was installed (lock file, pyproject, this
# script); when it matches, nothing is reinstalled. torch comes first and alone, because
# `torch==2.13.0` resolves to the machine's local CPU build here (a plain range would fetch a multi-GB
# CUDA build); requirements/lock.txt is the complete resolved closure, installed with --no-deps so
# pip cannot drift (facts: skypilot needs click<8.2, huggingface-hub>=1.16.3 needs click>=8.4).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.wrinklefree-setup"
want="$(cat requirements/lock.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

# Debian packages: the Python documentation corpus (data=python_docs, mixed_pretrain), and the
# Chromium that the Prefect UI's browser test drives (tests/flows/test_real_server.py).
debs=()
[ -d /usr/share/doc/python3.11/html/_sources ] || debs+=(python3.11-doc)
[ -x /usr/bin/chromium ] || debs+=(chromium)
if [ "${#debs[@]}" -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian ${debs[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}"; } >/dev/null \
        || echo "setup: could not install ${debs[*]}; data=python_docs or the browser test will be unavailable"
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import wrinklefree_core" 2>/dev/null; then
    echo "setup: .venv is up to date"
    exit 0
fi

# The environment takes ~3.5 GB and building llama.cpp needs more in the temp folder; stop with a
# clear message up front instead of an OSError halfway through pip.
NEED_GB=6
for where in . "${TMPDIR:-/tmp}"; do
    free_gb=$(df -Pk "$where" | awk 'NR==2 {print int($4 / 1048576)}')
    if [ "$free_gb" -lt "$NEED_GB" ]; then
        echo "setup: only ${free_gb} GB free on the disk holding $(cd "$where" && pwd); installing needs about ${NEED_GB} GB." >&2
        echo "setup: free some space (old outputs/, pip's cache: pip cache purge) and run scripts/setup.sh again." >&2
        exit 1
    fi
done

echo "setup: installing into $VENV (first run on a fresh machine takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
# llama-cpp-python builds llama.cpp from source (~10 min on 2 cores, once: pip caches the wheel).
# No tools, no multimodal, portable CPU flags: the export only needs libllama.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TOOLS=OFF -DMTMD_BUILD=OFF}"
"$VENV/bin/pip" install -q --no-deps -r requirements/lock.txt
"$VENV/bin/pip" install -q --no-deps -e .
echo "$want" > "$STAMP"
echo "setup: done"
