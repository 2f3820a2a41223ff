#!/usr/bin/env python
"""The project's import graph against its layers, and the walk a config takes through the code.

    python tools/import_graph.py                 # layer violations and cycles; exit 1 if any
    python tools/import_graph.py --edges         # also the package -> package edges
    python tools/import_graph.py --walk virt.task:train_virt [--arg cfg]

Layers, low to high: a module may import its own package, a package of a lower layer, or (inside
the method layer) a method package listed before it. Every import counts, including the lazy ones
inside functions: a lazy import is still a dependency. tests/ is not part of the graph.

`--walk` follows one argument (default `cfg`) from a function through the calls it is passed to
(positionally, by keyword, or through a local variable derived from it), statically: calls are
resolved through each module's imports (a project function handed to a call together with the
argument counts as called with it), `self.method(...)` within a class, and a class call goes
to its `__init__`. It prints the files visited and the climbs: calls from a module to a module of a
higher layer (the data "climbing back up" the layers). Unresolved calls (methods of other objects,
library functions) end the walk there, so the counts are a lower bound and comparable between
commits, not a full call graph.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package -> rank (low to high). Method packages get sub-ranks: a later one may import an earlier one.
LAYERS = {
    "common": 0,
    "config": 1, "data": 1,
    "modeling": 2,
    "training": 3, "runtime": 3,
    "crossenc": 4.0, "pretrain": 4.1, "senbert": 4.2, "distill": 4.3, "virt": 4.4,
    "export": 5, "search": 5.1,
    "serve": 6,
    "bench": 7, "tools": 7, "run_tasks": 7, "textmatch": 7,
}
SKIP = {"tests", ".venv", "runs", ".git"}


def project_modules(root=ROOT):
    """module name -> file, for every project .py file outside tests/ and the venv."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if SKIP & set(rel.parts) or rel.parts[0].startswith("."):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[0] in LAYERS:
            out[".".join(parts)] = f
    return out


def package(module):
    return module.split(".")[0]


OVERRIDES = {}  # module -> rank, from --layer (to measure an old layout by what its files do)


def rank(module):
    for m in (module, *(module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1))):
        if m in OVERRIDES:
            return OVERRIDES[m]
    return LAYERS[package(module)]


def resolve_module(name, modules):
    """The longest project module that `name` (a dotted import path) names, or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def imports(modules):
    """module -> {imported project module: first line}."""
    graph = {}
    for mod, f in modules.items():
        found = {}
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                target = resolve_module(n, modules)
                if target and target != mod and package(target) in LAYERS:
                    found.setdefault(target, node.lineno)
        graph[mod] = found
    return graph


def closure(graph, start):
    """Every project module `start` depends on, directly or through others (itself excluded)."""
    seen, todo = set(), [start]
    while todo:
        for t in graph.get(todo.pop(), ()):
            if t not in seen and t != start:
                seen.add(t)
                todo.append(t)
    return seen


def violations(graph):
    """Imports from a module to one of a higher layer: [(importer, imported, line)]."""
    return sorted((m, t, line) for m, ts in graph.items() for t, line in ts.items()
                  if rank(t) > rank(m))


def cycles(edges):
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def package_edges(graph):
    out = defaultdict(set)
    for m, ts in graph.items():
        for t in ts:
            if package(t) != package(m):
                out[package(m)].add(package(t))
    return out


# ----------------------------------------------------------------------------- the walk
class ModuleInfo:
    """Functions (`f`, `Class.method`) and import aliases of one module."""

    def __init__(self, name, path, modules):
        self.name, self.path = name, path
        self.functions, self.classes, self.aliases = {}, set(), {}
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.classes.add(node.name)
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        self.functions[f"{node.name}.{item.name}"] = item
        for node in ast.walk(tree):  # lazy imports inside functions count too
            if isinstance(node, ast.Import):
                for a in node.names:
                    if resolve_module(a.name, modules):
                        self.aliases[a.asname or a.name.split(".")[0]] = ("module", a.name if a.asname else
                                                                          a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in modules:
                        self.aliases[a.asname or a.name] = ("module", sub)
                    elif node.module in modules:
                        self.aliases[a.asname or a.name] = ("name", node.module, a.name)


def _mentions(expr, names):
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(expr))


def _params(fn):
    a = fn.args
    return [p.arg for p in a.posonlyargs + a.args], {p.arg for p in a.args + a.kwonlyargs + a.posonlyargs}


def walk(start, arg="cfg", root=ROOT):
    """Follow `arg` from `start` ("module:function"): (visited functions, climbs [(caller, callee)])."""
    modules = project_modules(root)
    infos = {m: ModuleInfo(m, f, modules) for m, f in modules.items()}

    def target(mod, cls, call):
        """(module, function) a call resolves to, or None."""
        info, f = infos[mod], call.func
        if isinstance(f, ast.Name):
            if f.id in info.functions:
                return mod, f.id
            if f.id in info.classes and f"{f.id}.__init__" in info.functions:
                return mod, f"{f.id}.__init__"
            alias = info.aliases.get(f.id)
            if alias and alias[0] == "name":
                return lookup(alias[1], alias[2])
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if f.value.id == "self" and cls and f"{cls}.{f.attr}" in info.functions:
                return mod, f"{cls}.{f.attr}"
            alias = info.aliases.get(f.value.id)
            if alias and alias[0] == "module":
                m = resolve_module(alias[1], modules)
                return lookup(m, f.attr) if m else None
        return None

    def lookup(mod, name):
        info = infos.get(mod)
        if info is None:
            return None
        if name in info.functions:
            return mod, name
        if name in info.classes and f"{name}.__init__" in info.functions:
            return mod, f"{name}.__init__"
        alias = info.aliases.get(name)  # re-exported from a package __init__
        if alias and alias[0] == "name":
            return lookup(alias[1], alias[2])
        return None

    mod, fn = start.split(":")
    seen, climbs, todo = set(), set(), [(mod, fn, frozenset([arg]))]
    while todo:
        mod, fn, tracked = todo.pop()
        if (mod, fn, tracked) in seen:
            continue
        seen.add((mod, fn, tracked))
        node = infos[mod].functions[fn]
        cls = fn.split(".")[0] if "." in fn else None
        names = set(tracked)
        changed = True
        while changed:  # local variables derived from the tracked argument
            changed = False
            for n in ast.walk(node):
                if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None and _mentions(n.value, names):
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                        for x in ast.walk(t):
                            if isinstance(x, ast.Name) and x.id not in names:
                                names.add(x.id)
                                changed = True
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            hit = target(mod, cls, call)
            if hit is None:
                continue
            callee = infos[hit[0]].functions[hit[1]]
            positional, all_params = _params(callee)
            if positional and positional[0] in ("self", "cls"):
                positional = positional[1:]
            passed = {positional[i] for i, a in enumerate(call.args) if i < len(positional) and _mentions(a, names)}
            passed |= {k.arg for k in call.keywords if k.arg in all_params and _mentions(k.value, names)}
            if not passed:
                continue
            hits = [(hit, frozenset(passed))]
            for a in list(call.args) + [k.value for k in call.keywords]:  # a function handed over with the config
                ref = target(mod, cls, ast.Call(func=a, args=[], keywords=[])) if isinstance(a, ast.Name) else None
                if ref is not None and _params(infos[ref[0]].functions[ref[1]])[0]:
                    hits.append((ref, frozenset(_params(infos[ref[0]].functions[ref[1]])[0][:1])))
            for (m2, f2), params in hits:
                if rank(m2) > rank(mod):
                    climbs.add((f"{mod}:{fn}", f"{m2}:{f2}"))
                todo.append((m2, f2, params))
    return {(m, f) for m, f, _ in seen}, sorted(climbs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--edges", action="store_true", help="print the package -> package edges")
    p.add_argument("--walk", action="append", default=[], metavar="MODULE:FUNCTION")
    p.add_argument("--closure", action="append", default=[], metavar="MODULE",
                   help="the modules MODULE depends on (its import closure) and the upward imports among them")
    p.add_argument("--arg", default="cfg", help="the argument --walk follows (default cfg)")
    p.add_argument("--layer", action="append", default=[], metavar="MODULE=RANK",
                   help="rank one module as another layer (e.g. training.finetune=4 for the old layout)")
    args = p.parse_args(argv)
    for item in args.layer:
        m, r = item.split("=")
        OVERRIDES[m] = float(r)
    modules = project_modules()
    graph = imports(modules)
    if args.edges:
        for pkg, ts in sorted(package_edges(graph).items()):
            print(f"{pkg:<10} -> {', '.join(sorted(ts, key=lambda t: (LAYERS[t], t)))}")
    for start in args.closure:
        deps = closure(graph, start)
        up = [v for v in violations(graph) if v[0] in deps | {start}]
        print(f"closure {start}: {len(deps)} modules, {len(up)} upward imports among them")
    for start in args.walk:
        visited, climbs = walk(start, args.arg)
        files = sorted({str(modules[m].relative_to(ROOT)) for m, _ in visited})
        print(f"walk {start} ({args.arg}): {len(files)} files, {len(climbs)} climbs")
        for f in files:
            print(f"  file  {f}")
        for a, b in climbs:
            print(f"  climb {a} -> {b}")
    bad = violations(graph)
    loops = cycles(graph) + [c for c in cycles(package_edges(graph)) if len(c) > 1]
    for m, t, line in bad:
        print(f"layer: {modules[m].relative_to(ROOT)}:{line} imports {t} (layer {rank(t)} > {rank(m)})")
    for c in loops:
        print(f"cycle: {' <-> '.join(c)}")
    print(f"{len(modules)} modules, {sum(map(len, graph.values()))} imports, "
          f"{len(bad)} layer violations, {len(loops)} cycles")
    return 1 if bad or loops else 0


if __name__ == "__main__":
    sys.exit(main())
