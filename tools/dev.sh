#!/usr/bin/env bash
# Set up a virtual environment and run the tests or the demo.
#   bash tools/dev.sh test    # install everything, type-check, run the whole test suite
#   bash tools/dev.sh fast    # the inner loop: type-check, every test not marked slow
#   bash tools/dev.sh demo    # install everything, run the main job on the embedded dataset
# Extra arguments go to pytest (test) or to `python -m shardprune demo` (demo).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SHARDPRUNE_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# The CPU build of torch first: a plain `torch` requirement can pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" \
    || "$VENV/bin/python" -m pip install -q --disable-pip-version-check torch --index-url https://download.pytorch.org/whl/cpu
# Pinned versions of everything else (tools/constraints.txt, a `pip freeze` of a working set-up):
# unpinned, pip's resolver backtracked over the boto/aiobotocore/lightning versions for more than
# 10 minutes on a fresh machine; pinned, the install takes about a minute.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c tools/constraints.txt -e ".[test]"
# The S3 tests' server (tests/s3rver.py): npm s3rver into an ignored local folder.
if [ ! -f .s3rver/node_modules/s3rver/bin/s3rver.js ]; then
    npm install -q --prefix .s3rver s3rver@3.7.1 --no-audit --no-fund
fi
cmd=${1:-test}
shift || true
case "$cmd" in
    test)
        "$VENV/bin/python" -m mypy
        "$VENV/bin/python" -m pytest -q -n "${PYTEST_WORKERS:-2}" "$@"
        ;;
    fast)
        "$VENV/bin/python" -m mypy
        "$VENV/bin/python" -m pytest -q -n "${PYTEST_WORKERS:-2}" -m "not slow" "$@"
        ;;
    demo)
        "$VENV/bin/python" -m shardprune demo "$@"
        ;;
    *)
        echo "usage: bash tools/dev.sh [test|fast|demo] [args...]" >&2
        exit 2
        ;;
esac
