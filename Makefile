# Set-up and test commands. Both create a virtualenv (.venv) unless one is
# already active, and install what they need into it.
#   make demo   - build the built-in corpus and pre-train the demo model on CPU
#   make test   - install .[test,torch] and run the test suite
PYTHON ?= python3
# The PyTorch build used for conversion and parity tests; override for GPU
# builds, e.g. `make test TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
WORKDIR ?= runs/demo
PYTEST_ARGS ?=

ifeq ($(strip $(VIRTUAL_ENV)),)
ENV_DIR := $(VENV)
else
ENV_DIR := $(VIRTUAL_ENV)
endif
PY := $(ENV_DIR)/bin/python

.PHONY: test demo install clean

$(PY):
	$(PYTHON) -m venv $(ENV_DIR)
	$(PY) -m pip install --quiet --upgrade pip

$(ENV_DIR)/.lxmert-jax-base: setup.py | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(ENV_DIR)/.lxmert-jax-test: setup.py | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,torch]"
	touch $@ $(ENV_DIR)/.lxmert-jax-base

install: $(ENV_DIR)/.lxmert-jax-base

test: $(ENV_DIR)/.lxmert-jax-test
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(ENV_DIR)/.lxmert-jax-base
	$(PY) -m lxmert_jax.main --config=configs/pretrain.py:demo --workdir=$(WORKDIR)

clean:
	rm -rf $(VENV) runs .pytest_cache
