#!/usr/bin/env bash
# One lent-GPU session of tritonkron, about 6 minutes: the environment, `python -m perf.gpu_check
# --quick` (device peak, kernel correctness, op timing, the Kron step and the end-to-end training
# step of a GPT-2-small-shaped model), whether a compiled Kron step is captured in CUDA graphs
# (`python -m perf.cudagraph_check`) and the CUDA run of the kernel and Triton-path tests.
#
# Run it through the device tool, from the repository root, as the ONE command of the lease:
#
#     TRITONKRON_GIT_COMMIT=<commit> bash perf/gpu_session.sh        (timeout_s 420)
#
# TRITONKRON_GIT_COMMIT names the commit measured where the copy on the device has no .git.
# `bash perf/gpu_session.sh --dry-run` prints the stages and their time limits, running nothing.
#
# Packages. The GPU image (torch 2.11, triton 3.6, Python 3.12) has pandas, tabulate, pytest,
# pytest-xdist and pytest-timeout; it has no heavyball, so the SOAP row of the end-to-end table
# reads "skipped: heavyball not importable (...)" unless heavyball travels as a wheel. heavyball is
# pure Python and its needs (opt-einsum, numpy) are in the image. Once, here, in the repo root:
#
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux2014_x86_64 -d .whl heavyball==3.2.1
#
# and name `.whl` in the device tool's `carry`. Every .whl/*.whl is installed into /tmp/site (put
# first on PYTHONPATH) before the stages; a failed install is reported and the run goes on.
#
# Stages, each under its own `timeout` so that one hang cannot take the whole lease; the limits
# come out of SESSION_BUDGET_S (default 360 s, counted from the start of this script):
#   nvidia-smi, versions  the device, torch, triton and the optional packages   ≤ 20 + 30 s
#   wheels, heavyball     pip install of .whl/*.whl, when there are any         ≤ 40 + 20 s
#   gpu_check  --quick --budget-s 80 --e2e-budget-s 120 (about 4 minutes)      ≤ 270 s
#   cudagraph  torch.compile(mode="reduce-overhead") of a steady Kron step on a
#              96 × 64 weight: captured or the skip reasons, eager vs compiled ≤ 40 s
#   pytest     tests/ops, tests/optim/test_triton_path.py and
#              tests/optim/test_kernel_guard.py on CUDA, -x                   what is left − 10 s
#   summary    the end-to-end table, failures and the test tally              ≤ 5 s
#
# Output under $OUT (the device tool returns at most 8 files, no more than 2 folders down):
#   $OUT/session.log   everything printed, in order
#   $OUT/pytest_cuda.txt   the CUDA test run
#   $OUT/gc/           gpu_check_{correctness,timing,step,e2e}.csv and gpu_check_<date>_<gpu>.md
# Without $OUT (a run by hand) the files go to ${TMPDIR:-/tmp}/tritonkron_gpu_session.

set -u -o pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
fi

PY="${PYTHON:-python3}"
OUT="${OUT:-${TMPDIR:-/tmp}/tritonkron_gpu_session}"
LOG="$OUT/session.log"
BUDGET="${SESSION_BUDGET_S:-360}"
GC_TIMEOUT=270
CG_TIMEOUT=40
GC_ARGS=(--quick --budget-s 80 --e2e-budget-s 120 --out-dir "$OUT/gc")
TESTS=(tests/ops tests/optim/test_triton_path.py tests/optim/test_kernel_guard.py)
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET TRITONKRON_BACKEND # CUDA kernels, not the interpreter; the library default
declare -A RC=()
VERSIONS_PY='
import importlib.metadata as md
import platform

import torch

cuda = torch.cuda.is_available()
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
print("device:", torch.cuda.get_device_name() if cuda else "no CUDA device")
for name in ("triton", "pandas", "tabulate", "pytest", "pytest-xdist", "pytest-timeout", "heavyball"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed" + (": the end-to-end SOAP row is skipped" if name == "heavyball" else ""))
'

mkdir -p "$OUT/gc"
: >"$LOG"

say() { echo "$*" | tee -a "$LOG"; }

left() { echo $((BUDGET - SECONDS)); }

# stage NAME LIMIT_S COMMAND...: COMMAND under `timeout`, its output appended to the log (and to
# $STAGE_COPY when set).
stage() {
    local name="$1" limit="$2"
    shift 2
    say ""
    say "=== $name (limit ${limit} s, ${SECONDS} s into the session): $*"
    if ((DRY_RUN)); then
        RC[$name]="dry-run"
        return 0
    fi
    if ((limit < 5)); then
        say "=== $name: skipped, the session budget is spent"
        RC[$name]="skipped"
        return 0
    fi
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG" ${STAGE_COPY:+"$STAGE_COPY"}
    RC[$name]=${PIPESTATUS[0]}
    if [[ "${RC[$name]}" == 124 || "${RC[$name]}" == 137 ]]; then
        say "=== $name: stopped at its ${limit} s limit"
    fi
    say "=== $name: exit ${RC[$name]} at ${SECONDS} s"
}

summary() {
    local md n
    md=$(find "$OUT/gc" -name 'gpu_check_*.md' | head -n 1)
    if [[ -n "$md" ]]; then
        say "--- end-to-end table ($md)"
        sed -n '/^## End-to-end/,/^## Models/p' "$md" | tee -a "$LOG"
    else
        say "--- no gpu_check summary was written"
    fi
    say "--- failures reported by gpu_check"
    grep -A 30 "failures:" "$LOG" | grep "^  " | head -n 20 | tee -a "$LOG"
    say "--- pytest tally"
    tail -n 5 "$OUT/pytest_cuda.txt" 2>/dev/null | tee -a "$LOG"
    n=$(find "$OUT" -type f | wc -l)
    say "--- $n files under $OUT (the device tool returns at most 8)"
    find "$OUT" -type f | sort | tee -a "$LOG"
}

say "tritonkron GPU session: commit ${TRITONKRON_GIT_COMMIT:-(from .git)}, budget ${BUDGET} s, output in $OUT"
stage nvidia-smi 20 nvidia-smi
stage versions 30 "$PY" - <<<"$VERSIONS_PY"
if compgen -G ".whl/*.whl" >/dev/null; then
    stage wheels 40 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    stage heavyball 20 "$PY" -c "import heavyball; print('heavyball', heavyball.__file__)"
else
    say ""
    say "=== wheels: no .whl/*.whl (heavyball absent: the end-to-end SOAP row will be skipped)"
fi

limit=$(($(left) - 60))
stage gpu_check $((limit < GC_TIMEOUT ? limit : GC_TIMEOUT)) "$PY" -m perf.gpu_check "${GC_ARGS[@]}"

limit=$(($(left) - 50))
stage cudagraph $((limit < CG_TIMEOUT ? limit : CG_TIMEOUT)) "$PY" -m perf.cudagraph_check --steps 20

PYTEST_ARGS=("${TESTS[@]}" -x -q -p no:cacheprovider)
if "$PY" -c "import xdist" 2>/dev/null; then
    PYTEST_ARGS+=(-n 8) # parallel compiles; the image has pytest-xdist
fi
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    PYTEST_ARGS+=(--timeout 120)
fi
if ((DRY_RUN)) || "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    STAGE_COPY="$OUT/pytest_cuda.txt" stage pytest $(($(left) - 10)) "$PY" -m pytest "${PYTEST_ARGS[@]}"
else
    say "=== pytest: skipped, torch sees no CUDA device (the tests would run on the interpreter)"
    RC[pytest]="no-cuda"
fi

if ((!DRY_RUN)); then
    summary
fi
say ""
tally=""
for k in nvidia-smi versions wheels heavyball gpu_check cudagraph pytest; do
    [[ -n "${RC[$k]:-}" ]] && tally+="$k=${RC[$k]} "
done
say "stages: ${tally}(${SECONDS} s)"
exit 0
