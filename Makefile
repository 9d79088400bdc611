# The README's two commands: `make demo` (set up, then run the demo) and `make test`.
# The virtual environment is created on first use in .venv (override with VENV=...).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
DATA ?= ../shared/data
STAMP := $(VENV)/.distillseg-installed

.PHONY: install demo test quick-demo clean install-web test-web

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

# The browser front end (`distillseg web`) in a venv of its own: trame-slicer 2.0.0 pins
# slicer-core 5.11, the test extra 5.13. Its tests need Chromium from the system's packages
# (Debian: apt-get install -y chromium); Playwright drives it, `playwright install` is never run.
# The module's MRML tests run here too: the front end runs that logic on slicer-core 5.11.
WEB_VENV ?= .venv-web
WEB_PY := $(WEB_VENV)/bin/python
WEB_STAMP := $(WEB_VENV)/.distillseg-web-installed

install-web: $(WEB_STAMP)

$(WEB_STAMP): pyproject.toml
	$(PYTHON) -m venv $(WEB_VENV)
	$(WEB_PY) -m pip install -q --upgrade pip
	$(WEB_PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(WEB_PY) -m pip install -q -e '.[web]'
	touch $(WEB_STAMP)

test-web: $(WEB_STAMP)
	@command -v chromium >/dev/null || { echo "error: chromium not found (apt-get install -y chromium)" >&2; exit 2; }
	VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow DISTILLSEG_DATA=$(DATA) $(WEB_PY) -m pytest -q \
		Testing/test_web_browser.py Testing/test_web_cli.py Testing/test_layering.py \
		Testing/test_slicer_logic.py Testing/test_slicer_promptable.py Testing/test_slicer_prompts.py \
		Testing/test_slicer_engine_runner.py Testing/test_refinement_loop.py

clean:
	rm -rf $(VENV) $(WEB_VENV) demo-output .pytest_cache
