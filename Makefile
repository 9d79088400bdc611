# The README's two commands: `make demo` (set up, then run the demo) and `make test`.
# The virtual environment is created on first use in .venv (override with VENV=...).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
DATA ?= ../shared/data
STAMP := $(VENV)/.distillseg-installed

.PHONY: install demo test quick-demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision pinned together (segment-anything and timm need this torchvision)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/distillseg demo --data $(DATA)/sts-petct --out demo-output

quick-demo: $(STAMP)
	$(VENV)/bin/distillseg demo --data $(DATA)/sts-petct --out demo-output --quick

test: $(STAMP)
	DISTILLSEG_DATA=$(DATA) $(PY) -m pytest Testing -q

clean:
	rm -rf $(VENV) demo-output .pytest_cache
