"""The package's floors (`vlm_jax.FLOORS`): every import, at the top of a module or inside a function,
goes to the module's own floor or a lower one, and no set of modules imports itself in a circle."""

import ast
from pathlib import Path

import vlm_jax

PACKAGE = Path(vlm_jax.__file__).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("vlm_jax", *path.relative_to(PACKAGE).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


def _owner(name: str) -> str | None:
    """The package module that `name` (a module, or a name inside one) belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(source: str, package: str) -> set[str]:
    """Every dotted name the source imports (`from a import b` gives `a.b`), anywhere in it, with relative
    imports resolved against `package`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imports_of(name: str) -> set[str]:
    """The other vlm_jax modules `name` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    owners = {_owner(target) for target in imported_names(path.read_text(), package) if target.startswith("vlm_jax")}
    return owners - {None, name, "vlm_jax"}


def floor_of(name: str) -> int:
    top = name.split(".")[1] if name != "vlm_jax" else ""
    for index, floor in enumerate(vlm_jax.FLOORS):
        if top in floor:
            return index
    raise AssertionError(f"{name} is on no floor of vlm_jax.FLOORS; add its top-level name to one")


def test_every_import_goes_to_the_same_floor_or_below():
    upward = [f"{name} (floor {floor_of(name)}) imports {target} (floor {floor_of(target)})"
              for name in MODULES if name != "vlm_jax" for target in sorted(imports_of(name))
              if floor_of(target) > floor_of(name)]
    assert not upward, "\n".join(upward)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_each_other_in_a_circle():
    assert circles({name: imports_of(name) for name in MODULES}) == []


def test_the_checks_see_imports_inside_functions_and_relative_imports():
    source = "import json\nfrom . import pipeline\n\ndef f():\n    from ..run import loop\n    import vlm_jax.cli\n"
    assert imported_names(source, "vlm_jax.data") == {"json", "vlm_jax.data.pipeline", "vlm_jax.run.loop",
                                                      "vlm_jax.cli"}
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
