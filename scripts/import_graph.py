"""The repository's import graph, read from the source (nothing is imported), and its rules.

The packages form a one-way stack (docs/design.md): ``models`` (the network, the cameras and the
shard format, ``models/shards``) and ``cluster`` (SLURM, the local cluster) at the bottom, neither
importing the other; ``data_prep``, ``training`` and ``evaluation`` each import only those and
themselves, never each other. ``models.shards`` imports only
itself (the format stays light: no network code). No module imports itself back through others
(no circles), none is over ``MAX_LINES`` lines, and no module but ``models/shards/format.py``
spells a shard member name. ``tests/test_layers.py`` holds the code to these rules;
``scripts/draw_design.py`` draws the stack from the same graph.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from models.shards.format import CACHE_MEMBERS, CAMERAS, META, RENDER_EXTRAS

ROOT = Path(__file__).resolve().parents[1]
# cluster (SLURM and the local cluster: no model, no data) sits at the bottom beside models: the
# launchers of data_prep, training and evaluation all use it.
LAYERS = {"models": 0, "cluster": 0, "data_prep": 1, "training": 1, "evaluation": 1}
SHARED = "models.shards"  # the shared layer inside models: imports only itself
FORMAT_MODULE = "models.shards.format"  # the one module that spells member names
CHECKED = (*LAYERS, "scripts")  # scripts sit on top: they may import any package
MAX_LINES = 400
MEMBER_NAMES = (META, CAMERAS, *RENDER_EXTRAS, *CACHE_MEMBERS)


@dataclass
class Module:
    name: str  # dotted, e.g. training.samples (scripts.bench_data for scripts)
    path: Path
    lines: int
    imports: dict[str, int] = field(default_factory=dict)  # project module -> first line
    member_names: list[tuple[int, str]] = field(default_factory=list)  # (line, literal)
    named: dict[str, int] = field(default_factory=dict)  # modules named by import statements


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _spells_member(node: ast.AST, docstrings: set[int]) -> str | None:
    """A string literal that is a member name (``"meta.json"``, ``".meta.json"``) or the view
    pattern ``f"{i:03d}.png"``."""
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ):
        if any(node.value in (name, "." + name) for name in MEMBER_NAMES):
            return node.value
    if isinstance(node, ast.JoinedStr) and len(node.values) == 2:
        first, second = node.values
        spec = getattr(first, "format_spec", None)
        if (
            isinstance(first, ast.FormattedValue)
            and isinstance(spec, ast.JoinedStr)
            and [getattr(v, "value", None) for v in spec.values] == ["03d"]
            and isinstance(second, ast.Constant)
            and second.value == ".png"
        ):
            return "f'{...:03d}.png'"
    return None


def parse(source: str, name: str, path: Path, known: set[str]) -> Module:
    """The project imports (every ``import``, also inside functions) and member-name literals of
    one module's source; ``known``: the project's top-level package names."""
    tree = ast.parse(source, filename=str(path))
    module = Module(name, path, len(source.splitlines()))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
            module.named.update({t: node.lineno for t in targets if t.split(".")[0] in known})
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            if base.split(".")[0] in known:
                module.named.setdefault(base, node.lineno)
        for target in targets:
            if target.split(".")[0] in known:
                module.imports.setdefault(target, node.lineno)
        literal = _spells_member(node, docstrings)
        if literal is not None:
            module.member_names.append((getattr(node, "lineno", 0), literal))
    return module


def load(root: Path = ROOT) -> dict[str, Module]:
    """Every module of the checked packages (and scripts/) under ``root``."""
    modules = {}
    for top in CHECKED:
        for path in sorted((root / top).rglob("*.py")):
            name = module_name(path, root)
            modules[name] = parse(path.read_text(), name, path, set(CHECKED))
    for module in modules.values():  # ``from pkg import mod`` names a module: keep those only
        module.imports = {
            _owner(target, modules): line
            for target, line in module.imports.items()
            if _owner(target, modules) is not None
        }
        module.imports.pop(module.name, None)
    return modules


def _owner(target: str, modules: dict[str, Module]) -> str | None:
    """The project module ``target`` names (``training.samples.collate`` -> training.samples)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def rule_broken(source: str, target: str) -> str | None:
    """Why module (or package) ``source`` may not import ``target``; None when it may."""
    top, other = source.split(".")[0], target.split(".")[0]
    if other == "scripts" and top != "scripts":
        return "scripts/ sits on top; no package imports it"
    if top in LAYERS and other != top and LAYERS[other] >= LAYERS[top]:
        below = " and ".join(sorted(p for p in LAYERS if LAYERS[p] < LAYERS[top])) or "nothing"
        return f"{top} may import only {below} (and itself); move what both need down"
    if source.startswith(SHARED) and not target.startswith(SHARED):
        return f"{SHARED} imports only itself"
    return None


def layer_problems(modules: dict[str, Module]) -> list[str]:
    """Imports that go up or sideways, or out of the shared layer."""
    problems = []
    for module in modules.values():
        for target, line in sorted(module.named.items()):
            if target not in modules:
                path = module.path.relative_to(ROOT)
                problems.append(
                    f"{path}:{line}: {module.name} imports {target}, which is no module"
                )
        for target, line in sorted(module.imports.items()):
            reason = rule_broken(module.name, target)
            if reason is not None:
                where = f"{module.path.relative_to(ROOT)}:{line}: {module.name} imports {target}"
                problems.append(f"{where}: {reason}")
    return problems


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in modules[name].imports:
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == name:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return found


def package_edges(modules: dict[str, Module]) -> dict[tuple[str, str], int]:
    """``(from, to)`` -> number of imports between top-level packages (the shared layer
    ``models.shards`` counted as its own node)."""

    def node(name: str) -> str:
        return SHARED if name.startswith(SHARED) else name.split(".")[0]

    edges: dict[tuple[str, str], int] = {}
    for module in modules.values():
        for target in module.imports:
            pair = (node(module.name), node(target))
            if pair[0] != pair[1]:
                edges[pair] = edges.get(pair, 0) + 1
    return edges
