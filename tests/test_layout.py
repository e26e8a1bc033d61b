"""The house's structure, read from the source with `ast`: imports go down the layer order, no study imports
another, the runs layer knows no study, and no two modules import each other (not even from inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "alignlab"
# README's order: a module may import its own layer and the ones before it; the base modules serve every layer
LAYERS = ["envs", "models", "train", "organisms", "probes", "signals", "audit", "runs", "studies", "bench", "cli"]
BASE = {"__init__", "config", "registry", "artifacts", "progress", "seeds", "choices", "locks", "interrupts"}


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported alignlab module, at module level?) for every import in `path`."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):  # annotations only: `if TYPE_CHECKING:` imports never run
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names if a.name.startswith("alignlab")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            if base.startswith("alignlab"):
                # `from alignlab.x import y` may name a submodule y
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    target = sub if (SRC.parent / sub.replace(".", "/")).with_suffix(".py").exists() or \
                        (SRC.parent / sub.replace(".", "/")).is_dir() else base
                    out.append((target, id(node) in top))
    return out


MODULES = {_module(p): p for p in SRC.rglob("*.py")}


def _layer(module: str) -> str:
    part = module.split(".")[1] if "." in module else "__init__"
    return "base" if part in BASE else part


def test_imports_go_down_the_layer_order():
    bad = []
    for mod, path in MODULES.items():
        here = _layer(mod)
        for target, _ in _imports(path):
            there = _layer(target)
            if here == "base" or there == "base":
                continue
            if LAYERS.index(there) > LAYERS.index(here):
                bad.append(f"{mod} -> {target}")
    assert not bad, bad


def _study(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "studies" and parts[2] != "kit" else None


def test_no_study_imports_another_and_runs_know_no_study():
    bad = []
    for mod, path in MODULES.items():
        for target, _ in _imports(path):
            if _study(mod) and _study(target) and _study(mod) != _study(target):
                bad.append(f"{mod} -> {target}")
            if mod.startswith("alignlab.runs") and target.startswith("alignlab.studies"):
                bad.append(f"{mod} -> {target}")
            if mod.startswith("alignlab.studies.kit") and _study(target):
                bad.append(f"{mod} -> {target}")
    assert not bad, bad


def test_no_import_circles():
    graph = {m: {t for t, _ in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ is imported on the way to its modules: not an edge of the circle we mean
    cycles = []
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, cycles


def test_the_check_itself_sees_a_circle_and_an_upward_import(tmp_path):
    """The checks above would pass on a parser that saw nothing: show they see imports at all."""
    edges = {t for t, _ in _imports(MODULES["alignlab.studies.reward_hacking.study"])}
    assert "alignlab.runs.rl" in edges and "alignlab.runs.records" in edges
    fn_level = {t for t, top in _imports(MODULES["alignlab.cli"]) if not top}
    assert "alignlab.studies" in fn_level
