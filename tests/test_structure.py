"""The package's layout: no import cycles, building blocks never import chapter recipes, and the repository's
tooling stays out of what learners import."""

import ast
from pathlib import Path

import helpers

PACKAGE = Path(helpers.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports) as a path that returns to its start, or None."""
    done = set()
    for start in sorted(graph):
        stack, on_path = [iter(sorted(graph[start]))], [start]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                done.add(on_path.pop())
            elif child in on_path:
                return on_path[on_path.index(child) :] + [child]
            elif child not in done:
                stack.append(iter(sorted(graph[child])))
                on_path.append(child)
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_a_cycle_would_be_found():
    # helpers.train imports helpers.checkpoint; the function-level import of helpers.train that checkpoint once had
    # closed a cycle.
    back_edge = {**GRAPH, "helpers.checkpoint": GRAPH["helpers.checkpoint"] | {"helpers.train"}}
    assert find_cycle(back_edge) == ["helpers.checkpoint", "helpers.train", "helpers.checkpoint"]


def test_building_blocks_do_not_import_recipes_or_exercises():
    # Recipes and exercise checks are chapter material: they may use recipes; the blocks must not.
    blocks = [name for name in GRAPH if not name.startswith(("helpers.recipes", "helpers.exercises"))]
    wrong = {name: sorted(m for m in GRAPH[name] if m.startswith(("helpers.recipes", "helpers.exercises"))) for name in blocks}
    assert not {k: v for k, v in wrong.items() if v}


def test_the_package_does_not_import_repository_tooling():
    wrong = {
        name: sorted(m for m in _imports(path) if m.split(".")[0] in ("tools", "benchmarks", "tests"))
        for name, path in MODULES.items()
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_every_module_says_what_it_is_for():
    assert all(ast.get_docstring(ast.parse(path.read_text())) for path in MODULES.values())


def test_every_public_function_and_class_names_where_it_is_taught():
    unplaced = []
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                doc = (ast.get_docstring(node) or "").lower()
                if "chapter" not in doc and "tooling" not in doc:
                    unplaced.append(f"{name}.{node.name}")
    assert not unplaced, f"say which chapter (and section) teaches these: {unplaced}"
