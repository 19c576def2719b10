#!/usr/bin/env bash
# The four like-for-like system benchmarks of issue 10, at full size, one after the other:
#
#   1. bench/ppo_vs_trl_grpo.py    PPO on Ray actors vs TRL GRPOTrainer, same action space, 3 interleaved rounds
#   2. bench/lpo_vs_dpo_memory.py  LPO vs in-repo DPO / S-DPO vs TRL DPOTrainer (+ memory options), 3 rounds
#   3. bench/serve_load.py         Serve under load vs the in-process ceiling, ceilings between the load phases
#   4. bench/sft_throughput.py     SFT tokens/s and MFU (FLOPs of the positions actually used)
#   5. bench/generation_speed.py   page decoding ms/page before vs after the KV-cache decoder, 7 interleaved repeats
#
# Each writes bench/results/<name>.json through bench/provenance.py (git commit, command, load before
# and after, CPU model, threads, input checkpoint ids).
#
# THE BOX MUST BE QUIET. These are timings: run nothing else meanwhile (no training, no tests, no
# other benchmark, no Ray cluster). The script refuses to start when the 1-minute load average is
# above MAX_LOAD (default 1.0; MAX_LOAD=99 to override) and each JSON records the load it saw.
# Expect about 30-40 minutes on a 2-core CPU box.
#
# Inputs are the main job's checkpoints: run `make pipeline` first (it writes runs/ml-100k/{data,sft,reward});
# RUN=dir points at another pipeline output. TRL is the optional `peers` extra:
#   .venv/bin/pip install -c <(echo torch==2.13.0) "trl==1.16.0"
#
# Usage:  bash bench/run_system_benches.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/ml-100k}
MAX_LOAD=${MAX_LOAD:-1.0}
SFT_THREADS=${SFT_THREADS:-2}
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/rlhf-ray/torch_extensions}
export TOKENIZERS_PARALLELISM=false

for f in "$RUN/data/stats.json" "$RUN/sft/manifest.json" "$RUN/reward/manifest.json"; do
  if [ ! -f "$f" ]; then
    echo "missing $f: run the main job first (make pipeline), or set RUN to a pipeline output dir" >&2
    exit 2
  fi
done
if ! "$PY" -c "import trl" 2>/dev/null; then
  echo "TRL is not installed: .venv/bin/pip install -c <(echo torch==2.13.0) \"trl==1.16.0\"" >&2
  exit 2
fi
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; then
  echo "load average $load > MAX_LOAD=$MAX_LOAD: the box is not quiet; timings would be worthless" >&2
  exit 3
fi

step() { echo; echo "=== $(date +%H:%M:%S) $*"; "$@"; }

step "$PY" bench/ppo_vs_trl_grpo.py --data "$RUN/data" --sft "$RUN/sft" --reward "$RUN/reward" \
  --repeats 3 --cycles 3 --batch 64 --num-generations 4
step "$PY" bench/lpo_vs_dpo_memory.py --sft "$RUN/sft" --data "$RUN/data" \
  --batch-size 64 --steps 20 --warmup 3 --negatives 16 --max-history 50 --threads 1 --repeats 3
step "$PY" bench/serve_load.py --checkpoint "$RUN/sft" --data "$RUN/data" \
  --requests 2000 --concurrency 1,8,32 --ks 10,20 --max-seconds 25 --max-batch-size 16 --batch-wait-ms 20
step "$PY" bench/sft_throughput.py --data "$RUN/data" --steps 20 --threads "$SFT_THREADS"
step "$PY" bench/generation_speed.py --checkpoint "$RUN/sft" --data "$RUN/data" --repeats 7
echo; echo "=== $(date +%H:%M:%S) done: bench/results/{ppo_vs_trl_grpo,lpo_vs_dpo_memory,serve_load,sft_throughput,generation_speed}.json"
