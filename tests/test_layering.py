"""The package's folders follow the flow of a run, and its imports follow the folders.

Every import statement of every module (at the top, in a function, under TYPE_CHECKING), read
with ast, must name a module of the same stage or of an earlier one in STAGES, and the imports
together must hold no cycle. The top-level modules are the ground floor (the tables of choices,
the settings, errors, files and measurements): they import no stage folder. The package's
__init__.py, the public API, is the roof: it may import every stage and nothing imports it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import ratio_fast

PACKAGE = Path(ratio_fast.__file__).parent
ROOT = "ratio_fast"
# The flow of a run, first to last: the ground floor, then the stage folders.
STAGES = ("", "data", "models", "ops", "attacks", "training", "evaluation", "cli")
# Top-level modules that are doors into a later stage (kept so a documented command stays short).
DOORS = {"ratio_fast.torchrun": "cli"}


def module_name(path: Path) -> str:
    parts = (ROOT,) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (PACKAGE.joinpath(*name.split(".")[1:]) / "__init__.py").is_file()


def exists(name: str) -> bool:
    relative = name.split(".")[1:]
    return is_package(name) or PACKAGE.joinpath(*relative).with_suffix(".py").is_file()


def imports_of(path: Path) -> set[str]:
    """The package modules `path` imports anywhere in it (a submodule named in `from X import sub`
    counts as that submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == ROOT}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != ROOT:
                continue
            submodules = {f"{target}.{alias.name}" for alias in node.names if exists(f"{target}.{alias.name}")}
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(target)
    assert all(exists(module) for module in found), (path, sorted(m for m in found if not exists(m)))
    return found - {name}


def stage_of(name: str) -> int:
    if name in DOORS:
        return STAGES.index(DOORS[name])
    parts = name.split(".")
    folder = parts[1] if len(parts) > 2 or is_package(name) else ""
    assert folder in STAGES, f"{name}: a folder outside STAGES; add it in its place in the flow"
    return STAGES.index(folder)


GRAPH = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_no_module_imports_a_later_stage():
    late = [f"{module} ({STAGES[stage_of(module)] or 'top level'}) imports {target} "
            f"({STAGES[stage_of(target)] or 'top level'})"
            for module, targets in GRAPH.items() if module != ROOT
            for target in sorted(targets) if target == ROOT or stage_of(target) > stage_of(module)]
    assert late == []


def test_no_import_cycle():
    done, on_path, cycles = set(), [], []

    def visit(module):
        if module in on_path:
            cycles.append(on_path[on_path.index(module):] + [module])
            return
        if module in done:
            return
        on_path.append(module)
        for target in sorted(GRAPH[module]):
            visit(target)
        on_path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
    assert cycles == []


def test_the_check_sees_every_kind_of_import():
    """The reader finds relative imports of modules and of names, and function-level imports."""
    assert {"ratio_fast.config", "ratio_fast.training.speed", "ratio_fast.models"} <= GRAPH["ratio_fast.training.trainer"]
    assert "ratio_fast.cli.run" in GRAPH["ratio_fast.cli.main"]  # imported inside _run_train
