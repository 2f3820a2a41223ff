#!/usr/bin/env python
"""Check the requirement files against the code's imports: `python tools/check_requirements.py`.

- the serving code (SERVING: what serves, predicts with and searches an export directory, and
  `textmatch.load` of one) imports at module level only what requirements-serve.txt lists, and every
  entry there is imported by the serving code (its lazy imports may come from requirements.txt: the
  Keras and SavedModel paths; tests/test_serve.py proves an export's path imports none of them);
- every third-party top-level import of the runtime code (all but tests/, bench/, tools/) is listed in
  requirements-serve.txt or requirements.txt; those of tests/, bench/ and tools/ in any of the three
  (UNLISTED: what only code run in a separate venv imports; the Makefile's `pip install --no-deps`
  packages count as listed);
- requirements.txt includes requirements-serve.txt and requirements-dev.txt includes requirements.txt
  (`-r`), and no entry is listed twice;
- every entry is pinned (`name==version`);
- every entry is imported by the code its file serves (runtime code for requirements.txt), or is in
  INDIRECT with the reason it is needed anyway.

The imports are read with `ast` (imports inside functions count: the heavy ones are deferred on
purpose), so nothing is imported and no package needs to be installed. Prints the problems, exits 1
if there are any. Standard library only.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE, RUNTIME, DEV = "requirements-serve.txt", "requirements.txt", "requirements-dev.txt"
INCLUDES = {SERVE: [], RUNTIME: [SERVE], DEV: [RUNTIME]}  # each set adds to the one it includes
# The serving code: files, or directories ending in "/". Their module-level imports must be in the serving set.
SERVING = ("common/", "runtime/", "serve/", "search/", "config/", "data/", "textmatch.py", "run_tasks.py",
           "crossenc/predict.py", "modeling/__init__.py", "modeling/checkpoints.py", "modeling/meta.py",
           "modeling/serving_spec.py", "modeling/tokenization.py", "training/contract.py", "training/rundir.py")
DEV_DIRS = ("tests", "bench", "tools")  # code whose imports may come from requirements-dev.txt

# Import name -> distribution name, where they differ beyond case and `_`/`-` (longest dotted prefix wins).
DISTRIBUTIONS = {
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "google.protobuf": "protobuf",
    "tensorflow_text": "tensorflow-text",
    "tensorflow_serving": "tensorflow-serving-api",
    "grpc": "grpcio",
    "faiss": "faiss-cpu",
    "PIL": "pillow",
    "absl": "absl-py",
}

# Listed, pinned, never imported: why each is needed anyway.
INDIRECT = {
    "tensorboard": "the `tensorboard --logdir runs` viewer of the training logs (docs/tasks.md)",
    "sympy": "onnxruntime's transformer optimiser (export.fuse) needs it and does not declare it",
    "pytest-xdist": "the pytest plugin behind `make test`'s `-n 2`",
}

# Imported, deliberately not listed: only code that says it runs in a separate venv imports it.
UNLISTED = {
    "torch": "PyTorch peers of bench/ (skipped without it) and tools/make_minilm_fixture.py: a separate venv "
             "(docs/inference.md)",
    "sentence-transformers": "tools/make_hf_export_fixture.py only, run in a separate venv with torch (its docstring)",
}

# Installed by `make install` apart from the files (`pip install --no-deps NAME==VERSION`): pinned there.
MAKEFILE_NO_DEPS = re.compile(r"pip install --no-deps ([A-Za-z0-9_.\-]+)==(\S+)")

SKIP_DIRS = {"runs", "__pycache__", "node_modules"}


def canonical(name):
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(module):
    """Distribution name for the dotted import `module`."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in DISTRIBUTIONS:
            return DISTRIBUTIONS[".".join(parts[:i])]
    return canonical(parts[0])


def python_files(root=ROOT):
    """The project's .py files (hidden directories such as .venv and .git, and runs/, left out)."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if not any(p.startswith(".") or p in SKIP_DIRS for p in rel[:-1]):
            yield path


def imports(path, module_level=False):
    """Absolute dotted names imported anywhere in `path` (`module_level`: outside functions only, i.e.
    what importing the module runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        if not (module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
            todo.extend(ast.iter_child_nodes(node))


def serving_code(rel):
    """Whether the file at relative path `rel` (a str with /) is serving code (SERVING)."""
    return any(rel.startswith(s) if s.endswith("/") else rel == s for s in SERVING)


def local_modules(root=ROOT):
    """Top-level names the project's own code can import: the packages and modules at the root, and the
    modules of the script directories (bench/, tests/, tools/ put themselves or each other on sys.path:
    bench scripts import `benchlib`, tests import `tradeoff`)."""
    names = set()
    for d in (root, *(root / d for d in DEV_DIRS)):
        if d.is_dir():
            names |= {p.stem if p.suffix == ".py" else p.name for p in d.iterdir()
                      if p.suffix == ".py" or (p.is_dir() and not p.name.startswith("."))}
    return names


def third_party(module, local):
    """Whether `module` comes from neither the standard library nor the project (`local` names)."""
    top = module.split(".")[0]
    return not (top in sys.stdlib_module_names or top == "__future__" or top in local)


def third_party_imports(root=ROOT):
    """`{"runtime" | "dev" | "serving" | "serving-lazy": {distribution: [relative files importing it]}}`:
    "serving" holds the serving code's module-level imports, "serving-lazy" all of its imports."""
    found = {"runtime": {}, "dev": {}, "serving": {}, "serving-lazy": {}}
    local = local_modules(root)
    for path in python_files(root):
        rel = path.relative_to(root)
        scope = "dev" if rel.parts[0] in DEV_DIRS else "runtime"
        scopes = [(scope, False)] + ([("serving", True), ("serving-lazy", False)] if serving_code(rel.as_posix()) else [])
        for scope, module_level in scopes:
            for module in imports(path, module_level):
                if third_party(module, local):
                    found[scope].setdefault(distribution(module), set()).add(str(rel))
    return {scope: {d: sorted(files) for d, files in dists.items()} for scope, dists in found.items()}


def read_requirements(path):
    """`[(line number, raw entry, canonical name or None, pinned)]` of a requirements file; `-r` lines
    are returned with name None (the files are read one by one)."""
    entries = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry.startswith(("-r ", "--requirement")):
            entries.append((n, entry, None, True))
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*(\S.*)?", entry)
        name = canonical(m.group(1)) if m else entry
        entries.append((n, entry, name, bool(m and re.fullmatch(r"==\s*[0-9][\w.+!\-]*", m.group(2) or ""))))
    return entries


def makefile_pins(root=ROOT):
    """`{canonical name: version}` of the packages `make install` installs with --no-deps."""
    makefile = root / "Makefile"
    text = makefile.read_text(encoding="utf-8") if makefile.is_file() else ""
    return {canonical(name): version for name, version in MAKEFILE_NO_DEPS.findall(text)}


def problems(root=ROOT):
    """The mismatches between the requirement files and the imports, one sentence each."""
    out = []
    found = third_party_imports(root)
    listed = {SERVE: {}, RUNTIME: {}, DEV: {}}  # file -> {name: line}
    for fname in listed:
        path = root / fname
        if not path.is_file():
            out.append(f"{fname} is missing")
            continue
        includes = []
        for n, entry, name, pinned in read_requirements(path):
            if name is None:
                includes.append(entry.split()[-1])
                continue
            if not pinned:
                out.append(f"{fname}:{n}: `{entry}` is not pinned (name==version)")
            if any(name in names for names in listed.values()):
                out.append(f"{fname}:{n}: {name} is listed twice")
            listed[fname][name] = n
        if includes != INCLUDES[fname]:
            out.append(f"{fname} includes {includes}, expected {INCLUDES[fname]} (each set adds to the one it includes)")
    separate = makefile_pins(root)
    serve_ok = set(listed[SERVE])
    runtime_ok = serve_ok | set(listed[RUNTIME]) | set(separate)
    dev_ok = runtime_ok | set(listed[DEV]) | set(UNLISTED)
    for scope, allowed, fname in (("serving", serve_ok, SERVE), ("runtime", runtime_ok, RUNTIME), ("dev", dev_ok, DEV)):
        for dist, files in sorted(found[scope].items()):
            if dist not in allowed:
                where = f" ({UNLISTED[dist]})" if dist in UNLISTED else ""
                how = " at module level (serving code: import it inside the function that needs it)" \
                    if scope == "serving" and dist in runtime_ok else ""
                out.append(f"{dist} is imported by {', '.join(files)}{how} but not listed in {fname}{where}")
    used_serving, used_runtime = set(found["serving-lazy"]), set(found["runtime"])
    used_any = used_runtime | set(found["dev"])
    for fname, used in ((SERVE, used_serving), (RUNTIME, used_runtime), (DEV, used_any)):
        for name, n in listed[fname].items():
            if name not in used and name not in INDIRECT:
                hint = (f" (only by {', '.join(found['dev'][name])}: move it to {DEV})"
                        if fname == RUNTIME and name in found["dev"] else
                        f" by the serving code (by {', '.join(found['runtime'][name])}: move it to {RUNTIME})"
                        if fname == SERVE and name in found["runtime"] else "")
                out.append(f"{fname}:{n}: {name} is never imported{hint}; drop it, or say in INDIRECT "
                           f"(tools/check_requirements.py) why it is needed")
    return out


def main():
    found = problems()
    for p in found:
        print(p)
    if not found:
        print(f"{SERVE}, {RUNTIME} and {DEV}: every third-party import listed, every entry pinned and used")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
