# Two commands for a newcomer: `make demo` (the main job on the bundled data) and `make test`.
# Both create .venv and install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch as a range: this resolves to the build on this machine's disk where pip is capped, and to a
# recent release elsewhere. GPU machines carry their own torch.
TORCH_SPEC ?= "torch>=2.2,<3" "torchvision>=0.17"
RUN ?= runs/demo

.PHONY: setup demo test bench clean

$(BIN)/vqvae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev,tensorboard]"
	@touch $@

setup: $(BIN)/vqvae

demo: setup
	$(BIN)/vqvae pipeline --preset mnist --out $(RUN)-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python benchmarks/bench_vqvae.py
	$(BIN)/python benchmarks/bench_prior.py

clean:
	rm -rf $(VENV) runs .pytest_cache
