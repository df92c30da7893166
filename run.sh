#!/usr/bin/env bash
# bash run.sh setup | test [pytest args] | demo
#   setup: create .venv/ with Python 3.11 and install requirements.txt (fast when done)
#   test:  setup, then the test suite on the CPU
#   demo:  setup, then the whole flow on the embedded synthetic data set
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"

find_python() {
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 is needed to create $VENV (found none on PATH)" >&2
    exit 2
}

setup() {
    local want
    want=$(sha256sum requirements.txt | cut -d' ' -f1)
    if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        return 0
    fi
    if [[ ! -x "$PY" ]]; then
        "$(find_python)" -m venv "$VENV"
    fi
    "$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    echo "$want" > "$STAMP"
}

run_tests() {
    setup
    "$PY" -m pytest -q tests "$@"
}

run_demo() {
    setup
    "$PY" make_synthetic.py --out DATA --train-subjects 16 --test-subjects 4 --seed 0
}

case "${1:-}" in
    setup) setup ;;
    test) shift; run_tests "$@" ;;
    demo) run_demo ;;
    *) echo "usage: bash run.sh setup | test [pytest args] | demo" >&2; exit 2 ;;
esac
