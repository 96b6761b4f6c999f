"""The package's modules and the imports between them, read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` statement counts, at module level or inside a function (a lazy import
is still a dependency). ``from package import name`` depends on the submodule ``package.name`` when there is
one, else on ``package``. Strings that name modules (the plug-in registries) are not imports.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "ifseg_deploy"
#: Where each installed package's source lives (kernels/, export/ and bench/ install inside ifseg_deploy).
SOURCE_ROOTS = {
    PACKAGE: REPO / "ifseg_deploy",
    f"{PACKAGE}.kernels": REPO / "kernels",
    f"{PACKAGE}.export": REPO / "export",
    f"{PACKAGE}.bench": REPO / "bench",
}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function


@dataclass
class ImportGraph:
    modules: dict[str, Module]
    imports: list[Import] = field(default_factory=list)
    #: imports of ours that name no module, or a name the module does not define: (module, line, what)
    unresolved: list[tuple[str, int, str]] = field(default_factory=list)

    def edges(self, *, lazy: bool = True) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for i in self.imports:
            if lazy or not i.lazy:
                out[i.source].add(i.target)
        return out


def find_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    nested = {name.split(".", 1)[1] for name in SOURCE_ROOTS if "." in name}
    for package, root in SOURCE_ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if package == PACKAGE and parts[0] in nested:
                continue  # a stray copy: these packages install from their own roots
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            modules[name] = Module(name, path, is_package)
    return modules


def _targets(node: ast.Import | ast.ImportFrom, module: Module, modules: dict[str, Module]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    origin = _origin(node, module)
    submodules = [f"{origin}.{a.name}" for a in node.names if f"{origin}.{a.name}" in modules]
    return submodules if len(submodules) == len(node.names) else [origin, *submodules]


def _lazy_nodes(tree: ast.AST) -> set[int]:
    lazy: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            lazy.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return lazy


def _owner(target: str, modules: dict[str, Module]) -> str | None:
    """The module of ours that ``target`` names (``pkg.mod.attr`` -> ``pkg.mod``), or None for other packages."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def defined_names(module: Module) -> set[str] | None:
    """The names ``module`` defines at its top level (None: any name, the module has a ``__getattr__``)."""
    names: set[str] = set()
    tree = ast.parse(module.path.read_text(encoding="utf-8"))
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For)):
            pending += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            pending += [n for h in getattr(node, "handlers", []) for n in h.body]
    return names


def _check_resolves(node: ast.Import | ast.ImportFrom, module: Module, modules: dict[str, Module],
                    graph: ImportGraph) -> None:
    if isinstance(node, ast.Import):
        missing = [a.name for a in node.names if a.name.startswith(PACKAGE) and a.name not in modules]
    else:
        base = _origin(node, module)
        if not base.startswith(PACKAGE):
            return
        if base not in modules:
            missing = [base]
        else:
            defined = defined_names(modules[base])
            missing = [f"{base}.{a.name}" for a in node.names if a.name != "*" and f"{base}.{a.name}" not in modules
                       and defined is not None and a.name not in defined]
    graph.unresolved += [(module.name, node.lineno, m) for m in missing]


def _origin(node: ast.ImportFrom, module: Module) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> ImportGraph:
    modules = find_modules()
    graph = ImportGraph(modules)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
        lazy = _lazy_nodes(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            _check_resolves(node, module, modules, graph)
            for target in _targets(node, module, modules):
                owner = _owner(target, modules) if target.startswith(PACKAGE) else None
                if owner is None or owner == module.name:
                    continue
                if module.name.startswith(owner + "."):
                    continue  # a module of a package importing that package: already being imported
                graph.imports.append(Import(module.name, owner, node.lineno, id(node) in lazy))
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found
