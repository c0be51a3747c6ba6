# `make demo` and `make test` work on a fresh clone: they create .venv/ and install first.
PYTHON ?= python3
VENV ?= .venv
# The CPU build; override for a GPU machine, e.g. `make test TORCH=torch`.
TORCH ?= torch==2.13.0
# Debian's fluid-soundfont-gm: with it and fluidsynth, `make demo` also renders audio.
SOUNDFONT ?= /usr/share/sounds/sf2/FluidR3_GM.sf2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format clean cuda-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, on its own: as a dependency of another package it could pull a CUDA build.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev,audio]"
	touch $(STAMP)

install: $(STAMP)

# The bundled model writes a piece per composer, with its piano roll (and audio when FluidSynth is there).
demo: install
	$(BIN)/python scripts/generate.py --composers "Bach, Mozart, Chopin, Beethoven" --length 768 --plot \
		--soundfont $(SOUNDFONT) \
		--out outputs/demo $(if $(and $(shell command -v fluidsynth),$(wildcard $(SOUNDFONT))),--render wav)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# On a CUDA machine (`make cuda-check TORCH=torch`): the GPU kernels' extra, the tests that
# compare them with the PyTorch paths, and the GPU benchmark (batch 32 x 1024, bf16).
cuda-check: install
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $(BIN)/pip install --no-build-isolation -e ".[cuda]"
	$(BIN)/pytest tests/test_models.py tests/test_slstm.py -k "cuda or flashrnn"
	$(BIN)/python scripts/benchmark.py models --device cuda --precision bf16 --train_batch 32 \
		--train_lengths 1024 --contexts 256 4096 --json outputs/bench_models_gpu.json

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) outputs .pytest_cache
