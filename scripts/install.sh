#!/usr/bin/env bash
# Install the STROP toolkit into ./.venv from nothing.
#   bash scripts/install.sh          runtime (CLIs and the quickstart)
#   bash scripts/install.sh --test   plus pytest, ruff, the VQ reference library and, where
#                                    apt-get is usable, Debian's chromium for the report test
# torch is pinned first: the CPU wheel of torch 2.13.0 is what this machine has on disk, and an
# unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
if [ "$want_test" = 1 ]; then
  python -m pip install -q -e ".[test]"
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "install.sh: chromium could not be installed; the browser test will be skipped" >&2
  fi
else
  python -m pip install -q -e .
fi
echo "install.sh: ready (.venv, torch $(python -c 'import torch; print(torch.__version__)'))"
