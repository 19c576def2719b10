#!/usr/bin/env bash
# Make bench/.venv-recbole: RecBole 1.2.1 for the peers of bench/peers_bench.py.
#
#   bash bench/peers/setup_recbole.sh            # about a minute; ~1 GB
#   bash bench/peers/setup_recbole.sh --force    # rebuild from scratch
#
# A venv of its own because recbole 1.2.1 pins ray<=2.6.3, which must never reach the
# project's .venv (ray 2.60). recbole goes in with --no-deps plus the packages that the
# SASRec/GRU4Rec/BPR/LightGCN path really imports (recbole.config/data/model/trainer/utils): its pins on
# ray (only quick_start imports it, and the runner does not use quick_start), thop
# (FLOPs count, quick_start only), plotly (hyper-tuning plots) and tabulate are left out.
# setuptools<81 keeps pkg_resources for tensorboard; pandas<3 because RecBole's
# dataset code relies on pandas 2 behaviour. numpy 2 needs the alias shim in
# recbole_runner.py (scipy >= 1.12 one for LightGCN).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(dirname "$here")/.venv-recbole"
python="${PYTHON:-python3}"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
fi
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" "$here/recbole_runner.py" --check >/dev/null 2>&1; then
    echo "RecBole venv ready: $venv"
    exit 0
fi

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" torch==2.13.0                      # the CPU wheel (find-links) first
"${pip[@]}" --no-deps recbole==1.2.1
"${pip[@]}" "setuptools<81" "pandas<3" numpy scipy tqdm pyyaml "colorlog==4.7.2" "colorama==0.4.4" \
    scikit-learn tensorboard texttable psutil "torch==2.13.0"

"$venv/bin/python" "$here/recbole_runner.py" --check
echo "RecBole venv ready: $venv"
