"""The project's layers hold (tools/import_graph.py), and the checker itself catches what it must."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import import_graph as ig  # noqa: E402


def _tree(tmp_path, files):
    for name, text in files.items():
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text), encoding="utf-8")
    return tmp_path


def test_the_project_has_no_cycle_and_no_upward_import():
    graph = ig.imports(ig.project_modules())
    assert ig.violations(graph) == []
    assert ig.cycles(graph) == []
    assert ig.cycles(ig.package_edges(graph)) == []


def test_every_project_package_has_a_layer():
    top = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} | {"bench", "tools"}
    assert top - {"tests"} <= set(ig.LAYERS), sorted(top - set(ig.LAYERS))


def test_checker_finds_an_upward_import_a_lazy_one_and_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "modeling/__init__.py": "",
        "modeling/a.py": "def f():\n    from training.t import g  # lazy, still a dependency\n    return g\n",
        "training/__init__.py": "",
        "training/t.py": "from modeling.a import f\n\ndef g():\n    return 1\n",
        "serve/__init__.py": "",
        "serve/s.py": "import training.t\n",
    })
    graph = ig.imports(ig.project_modules(root))
    assert ig.violations(graph) == [("modeling.a", "training.t", 2)]
    assert ig.cycles(graph) == [["modeling.a", "training.t"]]
    assert ("serve.s", "training.t", 1) not in ig.violations(graph)  # downward: fine


def test_walk_follows_the_config_through_calls_variables_and_handed_functions(tmp_path):
    root = _tree(tmp_path, {
        "training/__init__.py": "",
        "training/runner.py": """
            def run(cfg, train_fn):
                sub = cfg.teacher
                return reuse(sub, train_fn)

            def reuse(sub_cfg, train_fn):
                from crossenc.task import finetune  # the engine reaching up into a method: a climb
                return train_fn(sub_cfg) or finetune(sub_cfg)

            def unrelated(x):
                return x
            """,
        "crossenc/__init__.py": "",
        "crossenc/task.py": """
            def finetune(cfg):
                return cfg

            def helper(cfg):
                return cfg
            """,
        "virt/__init__.py": "",
        "virt/task.py": """
            from training.runner import run, unrelated
            from crossenc.task import helper

            def train(cfg):
                unrelated(3)  # not given the config: not followed
                return run(cfg, helper)  # helper is handed over with the config: followed, not a climb
            """,
    })
    visited, climbs = ig.walk("virt.task:train", root=root)
    assert visited == {("virt.task", "train"), ("training.runner", "run"), ("training.runner", "reuse"),
                       ("crossenc.task", "helper"), ("crossenc.task", "finetune")}
    assert climbs == [("training.runner:reuse", "crossenc.task:finetune")]
