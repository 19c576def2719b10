#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything in the
# order that works: torch (CPU build, pinned) first, deepspeed without build isolation,
# then the project itself. Idempotent: a second run only checks that it is all there.
# Settings (environment): VENV (default .venv), PYTHON (python3), EXTRAS (test,tune),
# TORCH_INDEX (a pip index for torch alone, e.g. https://download.pytorch.org/whl/cpu for
# the CPU build where PyPI would give the CUDA one; unset: PyPI / /opt/wheels). The
# cluster image (cluster/Dockerfile) and the cluster launcher's set-up commands run this.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test,tune}
STAMP="$VENV/.rlhf-ray-installed"
want="$( (sha256sum pyproject.toml .ci/setup.sh; echo "$EXTRAS ${TORCH_INDEX:-}") | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
[ -d /opt/wheels ] && pip+=(--find-links /opt/wheels)
cons="$(mktemp)"; trap 'rm -f "$cons"' EXIT
echo "torch==2.13.0" > "$cons"
echo "[setup] torch 2.13.0${TORCH_INDEX:+ from $TORCH_INDEX}"
"${pip[@]}" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==2.13.0"
echo "[setup] build tools + deepspeed (no build isolation, needs torch present)"
"${pip[@]}" -c "$cons" setuptools wheel ninja==1.13.2 packaging
"${pip[@]}" -c "$cons" --no-build-isolation deepspeed==0.19.8
echo "[setup] rlhf-ray and its dependencies"
"${pip[@]}" -c "$cons" -e ".[$EXTRAS]"
"$VENV/bin/python" -m pip check
echo "$want" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start )) s; venv size $(du -sh "$VENV" | cut -f1)"
