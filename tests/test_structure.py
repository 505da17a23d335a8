"""The package keeps the shape docs/architecture.md draws: imports point down a fixed order of layers and never
close a circle (imports inside functions count: they are arrows too), and no function is longer than a screen."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "metaexp"
LONGEST = 60  # lines of a function, its docstring included

# Lowest first. A module imports from its own layer or lower ones only; within a layer, without a circle.
LAYERS = [
    ["version", "errors", "files", "logs", "objectives", "configs", "threads"],
    ["schema", "distributed", "trust", "rundir", "episodes", "machine", "records"],
    ["checkpoint", "backbones", "datasets", "presets", "plots"],
    ["samplers"],
    ["rollouts", "control", "algorithms", "trpo"],
    ["components", "engine", "resume"],
    ["evaluate"],
    ["loop"],
    ["summarize", "reproduce"],
    ["api", "callbacks"],
    ["cli", "__main__", "__init__"],
]


def modules() -> dict:
    """{"loop": Path, "algorithms.maml": Path, "backbones": .../backbones/__init__.py, ...}."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)] = path
    return found


def imports(path: Path, known: dict) -> set:
    """The metaexp modules `path` imports, anywhere in the file."""
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "metaexp":
            base = node.module.removeprefix("metaexp").lstrip(".")
            for alias in node.names:
                child = f"{base}.{alias.name}".lstrip(".")
                named.add(child if child in known else base or "__init__")
        elif isinstance(node, ast.Import):
            named |= {a.name.removeprefix("metaexp.") for a in node.names if a.name.startswith("metaexp.")}
    return named


def layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def graph() -> dict:
    known = modules()
    return {module: imports(path, known) - {module} for module, path in known.items()}


def test_every_module_has_a_layer():
    missing = [m for m in graph() if not any(m.split(".")[0] in names for names in LAYERS)]
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_imports_point_down():
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in graph().items()
        for target in targets
        if layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    arrows = graph()
    state, path = {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(arrows.get(module, ())):
            if state.get(target) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target) :] + [target]))
            if target not in state:
                visit(target)
        state[module] = "done"
        path.pop()

    for module in sorted(arrows):
        if module not in state:
            visit(module)


def test_the_checks_catch_what_they_guard():
    """The graph sees imports inside functions and `from metaexp import module`, so a circle through them
    would be found."""
    known = modules()
    assert "api" in imports(known["__init__"], known)  # inside __getattr__
    assert "checkpoint" in imports(known["loop"], known)  # `from metaexp import checkpoint, ...`
    assert "components" in imports(known["api"], known)  # inside a function
    assert layer("algorithms.maml") == layer("algorithms") > layer("samplers")


def test_no_function_longer_than_a_screen():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} has {node.end_lineno - node.lineno + 1} lines"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LONGEST
    ]
    assert not long, "\n".join(long)
