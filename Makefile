# Two commands on a fresh clone:  make demo  (the main job)  and  make test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first and only if missing, so an existing (e.g. CUDA) build is kept.
TORCH_SPEC ?= torch==2.13.0
# The independent reference for the attack cross-checks; its torchvision pin is not needed
# by the attacks we compare against, so it is installed without dependencies.
TORCHATTACKS_SPEC ?= torchattacks==3.5.1

.PHONY: demo test venv install install-dev lint format clean device-data device-check device-check-dry

$(PY):
	$(PYTHON) -m venv $(VENV)

venv: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"

install: venv
	$(PIP) install -q -e ".[demo]"

install-dev: venv
	$(PIP) install -q -e ".[dev,demo]"
	@$(PY) -c "import torchattacks" 2>/dev/null || $(PIP) install -q --no-deps "$(TORCHATTACKS_SPEC)"

demo: install
	$(VENV)/bin/odenets demo --out runs/demo

test: install-dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install-dev
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

format: install-dev
	$(PY) -m ruff format src tests benchmarks
	$(PY) -m ruff check --fix src tests benchmarks

# One archive of the CIFAR-10 JPEG folders in .device/ (git-ignored), to carry to a GPU machine.
DATA ?= ../shared/data/cifar10-jpeg
device-data:
	bash benchmarks/pack_device_data.sh $(DATA)

# Every GPU figure in one command of at most 9 minutes (docs/benchmarks.md, "GPU figures").
# On a GPU machine that has a copy of the checkout with its .device/ folder (make device-data
# here first; a remote runner must take the ignored .device/ along), without make or a venv:
#     bash benchmarks/device_check.sh OUT
# The dry run: the same stages at toy size on this machine's CPU, in about a minute.
DEVICE_OUT ?= runs/device-check
device-check: device-data
	PYTHON=$(PYTHON) bash benchmarks/device_check.sh $(DEVICE_OUT)

device-check-dry: install-dev device-data
	PYTHON=$(PY) bash benchmarks/device_check.sh $(DEVICE_OUT)-dry --cpu-dry-run

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
