#!/usr/bin/env bash
# The whole test suite: set-up, lint, format check, then pytest (extra arguments go to pytest).
# Every stage runs even when an earlier one fails; the exit status is non-zero if any failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate

failed=()
run() {
    printf '\n== %s\n' "$*"
    if ! "$@"; then
        failed+=("$*")
    fi
}

run ruff check .
run ruff format --check .
run python -m pytest -q "$@"

if [ "${#failed[@]}" -ne 0 ]; then
    printf '\nFAILED: %s\n' "${failed[@]}"
    exit 1
fi
printf '\nall checks passed\n'
