"""The house's rules, read from the code's own imports (ast, nothing imported): one direction, no cycle.

cli → train, report and infer → export → model and data → the ground floor (errors, atomic, registry, recipe,
runs, plots). infer never imports train; report (which train calls when a run ends) imports neither; model
and data never import each other; no import of app.* inside a function
outside app/cli/ (command bodies there may defer the library so that `trash --help` stays instant).
"""

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"
#: floor of each wing: a module may import its own floor (its own wing) or lower floors only
FLOORS = {"cli": 5, "train": 4, "report": 4, "infer": 4, "export": 3, "model": 2, "data": 2}
NEVER = {("infer", "train"), ("report", "train"), ("report", "infer"), ("model", "data"), ("data", "model")}


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in APP.rglob("*.py")}


def app_imports(path: Path, known: set[str]) -> tuple[set[str], list[tuple[int, str]]]:
    """(app modules imported at module level, [(line, module)] imported inside functions)."""
    top, inner = set(), []

    def target(module: str, names) -> str:
        for alias in names:  # `from app.data import masks` imports the module app.data.masks
            if f"{module}.{alias.name}" in known:
                return f"{module}.{alias.name}"
        return module

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            deeper = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            found = []
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "app":
                found = [target(child.module, child.names)]
            elif isinstance(child, ast.Import):
                found = [a.name for a in child.names if a.name.split(".")[0] == "app"]
            for name in found:
                (inner.append((child.lineno, name)) if in_function else top.add(name))
            visit(child, deeper)

    visit(ast.parse(path.read_text()), False)
    return top, inner


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "app"


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: app_imports(path, set(found))[0] for name, path in found.items() if name != "app.__main__"}


def test_imports_run_one_way():
    upward = []
    for module, imported in graph().items():
        for other in imported:
            a, b = wing(module), wing(other)
            if (a, b) in NEVER or FLOORS.get(b, 1) > FLOORS.get(a, 1) or (FLOORS.get(a, 1) == 1 and b in FLOORS):
                upward.append(f"{module} -> {other}")
    assert upward == []


def test_no_import_cycle():
    edges, cycles, state = graph(), [], {}

    def visit(node, stack):
        state[node] = "open"
        for other in edges.get(node, ()):
            if state.get(other) == "open":
                cycles.append(" -> ".join([*stack[stack.index(other) :], other]))
            elif other in edges and other not in state:
                visit(other, [*stack, other])
        state[node] = "done"

    for node in edges:
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_app_import_inside_a_function_outside_the_cli():
    known = set(modules())
    deferred = [
        f"{module_name(path)}:{line} {name}"
        for path in APP.rglob("*.py")
        if "cli" not in path.relative_to(APP).parts
        for line, name in app_imports(path, known)[1]
    ]
    assert deferred == []


def test_the_rules_can_fail(tmp_path):
    """The checks above see a deferred import and an upward one when there is one."""
    bad = tmp_path / "bad.py"
    bad.write_text("from app.train.run import fit\n\ndef f():\n    from app.data import masks\n")
    top, inner = app_imports(bad, {"app.data.masks", "app.train.run"})
    assert top == {"app.train.run"} and inner == [(4, "app.data.masks")]
    assert FLOORS[wing("app.train.run")] > FLOORS[wing("app.model.build")]
