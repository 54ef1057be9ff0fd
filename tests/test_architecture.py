"""docs/architecture.md's import rules, read from the source: no room imports a room on a higher floor, defences
never import the attacks, and the module graph (lazy imports inside functions included) has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "detrigger"
FLOORS = {**dict.fromkeys(("detrigger", "errors", "io", "fingerprint", "device", "progress", "batching", "cost",
                           "card", "cpus", "triggers", "argfields", "lexicon"), 0),
          "data": 1, "models": 2, "evaluation": 3, "training": 4, "attacks": 5, "defences": 6, "scan": 6,
          "filters": 6, "bench": 7, "cli": 8}


def imports() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports (anywhere in its code)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("detrigger"):
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("detrigger")}
        graph[name] = targets - {name}
    return graph


def room(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_room_imports_upwards_and_defences_never_import_attacks():
    graph = imports()
    assert set(map(room, graph)) == set(FLOORS), "a new room: give it a floor here and in docs/architecture.md"
    upward = [(m, t) for m, targets in graph.items() for t in targets if FLOORS[room(t)] > FLOORS[room(m)]]
    assert upward == []
    assert [(m, t) for m, targets in graph.items() if room(m) in ("defences", "scan", "filters")
            for t in targets if room(t) == "attacks"] == []


def test_no_import_cycle():
    graph, done, path = imports(), set(), []

    def visit(module: str) -> None:
        assert module not in path, " -> ".join(path[path.index(module):] + [module])
        if module in done:
            return
        path.append(module)
        for target in graph.get(module, ()):
            visit(target)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)
