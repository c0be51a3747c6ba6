# `make demo` and `make test` work on a fresh clone: they create .venv/ and install first.
PYTHON ?= python3
VENV ?= .venv
# The PyTorch the venv gets first: the package index's build of this version (on Linux from
# PyPI, a CUDA build); TORCH_INDEX picks another index, e.g. PyTorch's CPU-only one.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# Debian's fluid-soundfont-gm: with it installed, `make demo` also renders audio (in process, no FluidSynth).
SOUNDFONT ?= /usr/share/sounds/sf2/FluidR3_GM.sf2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo app finetune test lint format clean cuda-install cuda-check bundle gpu-kit figures fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, on its own: as a dependency of another package it could pull a CUDA build.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -e ".[dev,audio,app,score]"
	touch $(STAMP)

install: $(STAMP)

# The bundled model writes a piece per composer, with its piano roll (and audio when the soundfont is there).
demo: install
	$(BIN)/python scripts/generate.py --composers "Bach, Mozart, Chopin, Beethoven" --length 768 --plot \
		--output_dir outputs/demo $(if $(wildcard $(SOUNDFONT)),--render wav --soundfont $(SOUNDFONT))

# The web app on http://127.0.0.1:7860 (HOST=0.0.0.0 to serve other machines, PORT=8000 for another
# port; without them, GRADIO_SERVER_NAME and GRADIO_SERVER_PORT as on a Hugging Face Space, else those).
HOST ?=
PORT ?=
app: install
	$(BIN)/python scripts/app.py $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# Your own music: LoRA adapters and a new condition NAME for the bundled model (MODEL=... another one),
# trained on the MIDI files under DATA; FINETUNE_ARGS passes more (--epochs, --merge: scripts/finetune.py).
# The adapter goes to outputs/finetune-<name>/; the same command again resumes an interrupted run.
DATA ?=
NAME ?=
MODEL ?=
FINETUNE_ARGS ?=
finetune: install
	$(if $(and $(DATA),$(NAME)),,$(error make finetune needs DATA=<folder of MIDI files> NAME="<your style>"))
	$(BIN)/python scripts/finetune.py --data "$(DATA)" --name "$(NAME)" $(if $(MODEL),--model "$(MODEL)") $(FINETUNE_ARGS)

# The documentation's pictures (docs/sample.png, docs/app.png), drawn by the code as it is; the app's
# screenshot needs Debian's Chromium (apt-get install chromium).
figures: install
	$(BIN)/python scripts/figures.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# The GPU kernels' extra (mamba-ssm's and flashrnn's Triton kernels: nothing is compiled).
cuda-install: install
	MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE $(BIN)/pip install --no-build-isolation -e ".[cuda]"

# On a CUDA machine (`make cuda-check`): the tests that compare the GPU kernels
# with the PyTorch paths, and the GPU benchmark (batch 32 x 1024, bf16).
cuda-check: cuda-install
	$(BIN)/pytest tests/test_models.py tests/test_slstm.py -k "cuda or flashrnn"
	$(BIN)/python scripts/benchmark.py models --device cuda --precision bf16 --train_batch 32 \
		--train_lengths 1024 --contexts 256 4096 --json outputs/bench_models_gpu.json

# On a GPU machine (`make bundle`): the three families trained on the same tokens,
# judged and tabled in outputs/compare-small/, and their compact copies in modeling/pretrained/.
SOURCE ?= drengskapur/midi-classical-music
TOKENIZER ?= modeling/pretrained/gpt2-small-classical
bundle: cuda-install
	$(BIN)/python scripts/compare.py --sources $(SOURCE) --tokenizer $(TOKENIZER) --bundle_dir modeling/pretrained

# Where there is internet, for a GPU machine without it (`make gpu-kit`): gpu-kit/ holds the wheels
# it lacks, the token cache of SOURCE and run.sh; there, `bash gpu-kit/run.sh OUT_DIR [MINUTES]`.
# KIT_ARGS passes more (--target_packages, --python_version, --dry_run: see scripts/gpu_kit.py).
KIT_ARGS ?=
gpu-kit: install
	$(BIN)/python scripts/gpu_kit.py --sources $(SOURCE) --tokenizer $(TOKENIZER) $(KIT_ARGS)

# The fuzzer over MIDI bytes -> score -> tokens -> MIDI and over the pipeline's prompt path,
# FUZZ_SECONDS each (minutes, not part of `make test`); findings land in outputs/fuzz/<target>/crashes/.
FUZZ_SECONDS ?= 300
fuzz: install
	$(BIN)/pip install --quiet -e ".[fuzz]"
	$(BIN)/python scripts/fuzz.py --target data --seconds $(FUZZ_SECONDS)
	$(BIN)/python scripts/fuzz.py --target prompt --seconds $(FUZZ_SECONDS)

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) outputs .pytest_cache gpu-kit
