# The README's commands. Each is thin: it makes the environment, then calls `ssdstudy`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= default
DATA ?= data/synth

.PHONY: book test study data env clean

# Main command: environment, the book from the published study (results/default/);
# trains nothing, times the models on this machine for the hardware chapter.
book: env
	$(BIN)/ssdstudy bench --profile $(PROFILE) --train-steps 3 --out results/hardware/local.json
	$(BIN)/ssdstudy study all --profile $(PROFILE) --no-train

# The whole study computed again (hours on 2 CPU cores for the default profile):
# every run missing or stale is trained, then the book is built.
study: env
	$(BIN)/ssdstudy study all --profile $(PROFILE)

# Test command: environment, then the whole test suite (smoke study included).
test: env
	$(BIN)/python -m pytest -q

# The generated default dataset alone.
data: env
	$(BIN)/ssdstudy data synth $(DATA) && $(BIN)/ssdstudy data stats $(DATA)

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name ssdstudy --display-name "Python (ssdstudy)" >/dev/null
	touch $@

clean:
	rm -rf _build book/_build
