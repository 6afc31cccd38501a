# Two entry points for a fresh machine (Python 3.11 + pip): `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= ../shared/datasets
export KERAS_PNIL_DATA_DIR ?= $(abspath $(DATA_DIR))
export TF_CPP_MIN_LOG_LEVEL ?= 2
BIN = $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Main job: train a PNIL + NFGSM small CNN on MNIST and print its robustness table.
demo: $(BIN)/.installed
	$(BIN)/keras-pnil-train --config mnist_nfgsm --pnil --train-size 12000 --validation-size 1000 --epochs 3 --out runs/demo
	$(BIN)/keras-pnil-evaluate runs/demo --budget quick --out runs/demo/evaluation

# A suite's grid (evaluate/$(SUITE).json; default the paper's Table 1 on MNIST and Fashion-MNIST at the
# quick CPU budget, about an hour). BUDGET=paper is the GPU budget; SUITE=large_eps the large-ε study;
# SUITE=mnist_eps03 the peer reproduction at its full budget (about 2.5 h here). Rerunning resumes.
SUITE ?= table1
BUDGET ?=
DATASETS ?=
reproduce: $(BIN)/.installed
	$(BIN)/keras-pnil-reproduce --suite $(SUITE) $(if $(BUDGET),--budget $(BUDGET)) $(if $(DATASETS),--datasets $(DATASETS))

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The mutation check (benchmarks/mutants.toml): each semantic mutant of the core must make its tests fail.
# About 25 minutes here (132 mutants); not part of `make test`.
mutants: $(BIN)/.installed
	$(BIN)/python benchmarks/mutants.py

.PHONY: install demo reproduce test mutants
