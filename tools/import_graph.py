"""The import graph of face_transfer/, read with ast (nothing is imported): oversized files, import cycles,
imports that point up the layer order, and private names taken from another module.

    python tools/import_graph.py [--root DIR] [--check]

Prints one count per rule and lists what it counts; with --check the exit status is 1 when any count is not 0.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys

PACKAGE = "face_transfer"
MAX_LINES = 700

# Imports point down this order only: a module may import its own layer or a lower one.
LAYERS = ("core", "data", "teachers", "model", "product", "pipeline")
# The layer of each top-level module and subpackage of face_transfer (longest dotted prefix wins).
# core/ and the small utilities are the shared base (distribute holds the tf.distribute helpers every trainer
# uses). configs.py and user_inputs.py gather every subpackage's settings, so they sit with the pipeline;
# configs.py's being TensorFlow-free is held by tests/test_core_no_tf.py, not by its layer.
LAYER_OF = {
    "face_transfer": "core",  # __init__: the version string only
    "face_transfer.core": "core",
    "face_transfer.integrity": "core",
    "face_transfer.machine": "core",
    "face_transfer.distribute": "core",
    "face_transfer.data": "data",
    "face_transfer.teachers": "teachers",
    "face_transfer.fusion": "model",
    "face_transfer.student": "model",
    "face_transfer.evaluation": "product",
    "face_transfer.deploy": "product",
    "face_transfer.configs": "pipeline",
    "face_transfer.user_inputs": "pipeline",
    "face_transfer.stages": "pipeline",
    "face_transfer.pipeline": "pipeline",
    "face_transfer.adapt": "pipeline",
    "face_transfer.api": "pipeline",
}


@dataclasses.dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    local: bool  # inside a function body: runs when the function is called, not when the module is imported
    line: int


@dataclasses.dataclass(frozen=True)
class PrivateUse:
    src: str
    dst: str
    name: str
    line: int


def module_files(root: str) -> dict[str, str]:
    """dotted module name -> path, for every .py file under root/face_transfer."""
    out = {}
    base = os.path.join(root, PACKAGE)
    for d, dirs, files in os.walk(base):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__" and not x.startswith("."))
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join(rel)] = os.path.join(d, f)
    return out


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        hit = LAYER_OF.get(".".join(parts[:n]))
        if hit is not None:
            return hit
    return None


class _Visitor(ast.NodeVisitor):
    """Collects imports of face_transfer modules, each marked module-level or function-local, and the private
    names taken from them (`from m import _x`, or `m._x` on a module imported as `m`)."""

    def __init__(self, module: str, is_package: bool, modules: set[str]):
        self.module, self.is_package, self.modules = module, is_package, modules
        self.edges: list[Edge] = []
        self.private: list[PrivateUse] = []
        self.aliases: dict[str, str] = {}  # local name -> face_transfer module it is bound to
        self.depth = 0

    def _func(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _func

    def _edge(self, dst: str, line: int):
        e = Edge(self.module, dst, self.depth > 0, line)
        if dst != self.module and e not in self.edges:  # `from m import a, b` is one import of m
            self.edges.append(e)

    def visit_Import(self, node):
        for a in node.names:
            if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                target = a.name if a.name in self.modules else _owner(a.name, self.modules)
                self._edge(target, node.lineno)
                if a.asname:
                    self.aliases[a.asname] = target

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            pkg = self.module.split(".")
            pkg = pkg if self.is_package else pkg[:-1]
            pkg = pkg[:len(pkg) - node.level + 1]
            base = ".".join(pkg + ([base] if base else []))
        if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
            return
        for a in node.names:
            sub = f"{base}.{a.name}"
            if sub in self.modules:  # `from package import module`
                self._edge(sub, node.lineno)
                self.aliases[a.asname or a.name] = sub
                continue
            src = base if base in self.modules else _owner(base, self.modules)
            self._edge(src, node.lineno)
            if a.name.startswith("_") and not a.name.startswith("__") and src != self.module:
                self.private.append(PrivateUse(self.module, src, a.name, node.lineno))

    def visit_Attribute(self, node):
        if (isinstance(node.value, ast.Name) and node.value.id in self.aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            dst = self.aliases[node.value.id]
            if dst != self.module:
                self.private.append(PrivateUse(self.module, dst, node.attr, node.lineno))
        self.generic_visit(node)


def _owner(name: str, modules: set[str]) -> str:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or PACKAGE


@dataclasses.dataclass
class Graph:
    lines: dict[str, int]
    edges: list[Edge]
    private: list[PrivateUse]

    def oversized(self) -> list[tuple[str, int]]:
        return sorted(((m, n) for m, n in self.lines.items() if n > MAX_LINES), key=lambda t: -t[1])

    def cycles(self) -> list[list[str]]:
        """Strongly connected components of more than one module, over module-level and local edges alike."""
        adj: dict[str, set[str]] = {m: set() for m in self.lines}
        for e in self.edges:
            adj.setdefault(e.src, set()).add(e.dst)
        return [sorted(c) for c in _sccs(adj) if len(c) > 1]

    def upward(self) -> list[Edge]:
        out = []
        for e in self.edges:
            a, b = layer_of(e.src), layer_of(e.dst)
            if a is None or b is None or LAYERS.index(b) > LAYERS.index(a):
                out.append(e)
        return out


def build(root: str) -> Graph:
    files = module_files(root)
    modules = set(files)
    lines, edges, private = {}, [], []
    for mod, path in sorted(files.items()):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines[mod] = len(text.splitlines())
        v = _Visitor(mod, path.endswith("__init__.py"), modules)
        v.visit(ast.parse(text, filename=path))
        edges += v.edges
        private += v.private
    return Graph(lines, edges, private)


def _sccs(adj: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is small, but recursion depth is not worth thinking about)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in sorted(adj):
        if start in index:
            continue
        work = [(start, iter(sorted(adj.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(adj.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                out.append(comp)
    return out


def _short(m: str) -> str:
    return m[len(PACKAGE) + 1:] if m.startswith(PACKAGE + ".") else m


def report(g: Graph) -> tuple[str, dict[str, int]]:
    big, cyc, up, priv = g.oversized(), g.cycles(), g.upward(), g.private
    n_local = sum(e.local for e in g.edges)
    counts = {"files over %d lines" % MAX_LINES: len(big), "import cycles": len(cyc),
              "upward imports": len(up), "private names imported": len(priv)}
    out = [f"{len(g.lines)} modules, {len(g.edges)} imports between them "
           f"({len(g.edges) - n_local} module-level, {n_local} function-local)"]
    out += [f"{k}: {v}" for k, v in counts.items()]
    if big:
        out += ["", f"files over {MAX_LINES} lines:"] + [f"  {_short(m)} ({n})" for m, n in big]
    if cyc:
        out += ["", "import cycles (modules that reach each other):"] + [
            "  " + " <-> ".join(_short(m) for m in c) for c in cyc]
    if up:
        out += ["", "upward imports (layer order: " + " <- ".join(LAYERS) + "):"] + [
            f"  {_short(e.src)}:{e.line} ({layer_of(e.src)}) -> {_short(e.dst)} ({layer_of(e.dst)})"
            f"{' [function-local]' if e.local else ''}" for e in up]
    if priv:
        out += ["", "private names imported from another module:"] + [
            f"  {_short(p.src)}:{p.line} uses {_short(p.dst)}.{p.name}" for p in priv]
    return "\n".join(out), counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   help="the repository (the folder holding face_transfer/)")
    p.add_argument("--check", action="store_true", help="exit 1 when any count is not 0")
    args = p.parse_args(argv)
    text, counts = report(build(args.root))
    print(text)
    return 1 if args.check and any(counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
