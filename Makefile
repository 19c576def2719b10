# The README's two commands. Each sets itself up on a fresh machine (venv, install, data).
#   make pipeline   the main job: ml-100k, data -> pretrain -> sft -> reward -> ppo -> lpo -> eval, local Ray
#   make test       the default test suite (well under 15 minutes on 2 CPU cores)
# More: make test-slow (long end-to-end tests), make tables (the README's two protocol tables).
PY := .venv/bin/python
OUT ?= runs/ml-100k
CONFIG ?= rlhf_ray/configs/ml-100k.yaml
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/rlhf-ray/torch_extensions

.PHONY: setup pipeline test test-slow tables
setup:
	bash .ci/setup.sh

pipeline: setup
	.venv/bin/rlhf-ray pipeline --config $(CONFIG) --out $(OUT)

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# The README's two protocol tables on ml-100k (issue 13's one command): our chain on the selected
# config for SEEDS (every stage trained from scratch where its checkpoint is missing), the peers
# retrained at the configs their last search selected (RecBole in its own venv), then both tables
# again with the peers' rows, and the README's generated blocks. About 2.5 hours on 2 CPU cores;
# rerunning reuses every finished stage. Writes bench/results/{protocol,peers}_{loo,pagellm}.json.
SEEDS ?= 0,1,2
TABLES_CONFIG ?= bench/configs/ml-100k-selected.yaml
comma := ,
FIRST_SEED = $(firstword $(subst $(comma), ,$(SEEDS)))
tables: setup
	bash bench/peers/setup_recbole.sh
	$(PY) bench/protocol_table.py --protocol loo --seeds $(SEEDS) --config $(TABLES_CONFIG)
	$(PY) bench/peers_bench.py --protocol loo --data runs/bench/loo/seed$(FIRST_SEED)/data --grid-from bench/results/peers_loo.json
	$(PY) bench/protocol_table.py --protocol loo --seeds $(SEEDS) --config $(TABLES_CONFIG) --no-train
	$(PY) bench/protocol_table.py --protocol pagellm --seeds $(SEEDS) --config $(TABLES_CONFIG)
	$(PY) bench/peers_bench.py --protocol pagellm --data runs/bench/pagellm/seed$(FIRST_SEED)/data --grid-from bench/results/peers_pagellm.json
	$(PY) bench/protocol_table.py --protocol pagellm --seeds $(SEEDS) --config $(TABLES_CONFIG) --no-train
	$(PY) bench/readme_tables.py
