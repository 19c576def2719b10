# The README's two commands. Each sets itself up on a fresh machine (venv, install, data).
#   make pipeline   the main job: ml-100k, data -> pretrain -> sft -> reward -> ppo -> lpo -> eval, local Ray
#   make test       the default test suite (well under 15 minutes on 2 CPU cores)
# More: make test-slow (long end-to-end tests), make bench-sft.
PY := .venv/bin/python
OUT ?= runs/ml-100k
CONFIG ?= rlhf_ray/configs/ml-100k.yaml
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/rlhf-ray/torch_extensions

.PHONY: setup pipeline test test-slow
setup:
	bash .ci/setup.sh

pipeline: setup
	.venv/bin/rlhf-ray pipeline --config $(CONFIG) --out $(OUT)

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow
