"""The engine's folders are its layers: the import graph must keep them so.

Every ``import`` in ``DistillSegLib`` (top-level and inside functions, absolute and relative)
is read with :mod:`ast` and resolved to an engine package; the rules below are the
architecture of ``docs/engine.md`` ("Layout") and ``../shared/DESIGN.md``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "DistillSegLib"
GUI_MODULES = {"slicer", "qt", "ctk", "vtk", "mrml", "PythonQt"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def layer(module: str) -> str:
    """The engine folder a module belongs to (``DistillSegLib.io.case`` -> ``io``); top-level
    modules are their own layer (``errors``, ``atomic``, ``cli``...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def engine_graph() -> dict[str, set[str]]:
    """``{importing layer: {imported engine layers}}`` with the module pairs kept for messages."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ENGINE.rglob("*.py"):
        source = module_name(path)
        for target in imported_modules(path):
            if target.split(".")[0] == "DistillSegLib":
                graph[source].add(target)
    return graph


def offending(source_layer: str, forbidden: set[str]) -> list[str]:
    return sorted(f"{source} imports {target}" for source, targets in engine_graph().items()
                  if layer(source) == source_layer for target in targets if layer(target) in forbidden)


def test_the_graph_is_read():
    """Guard against a walker that finds nothing: known edges must be present."""
    graph = engine_graph()
    assert "DistillSegLib.io.volume" in graph["DistillSegLib.io.case"]
    assert "DistillSegLib.teachers.registry" in graph["DistillSegLib.teachers"]
    assert any(layer(t) == "io" for t in graph["DistillSegLib.student.inference"])


def test_io_imports_only_errors_and_atomic_writes():
    allowed = {"io", "errors", "atomic", ""}  # "" = the package root (__version__)
    bad = sorted(f"{source} imports {target}" for source, targets in engine_graph().items()
                 if layer(source) == "io" for target in targets if layer(target) not in allowed)
    assert not bad, "the data layer must not know models, students or teachers:\n" + "\n".join(bad)


def test_student_and_metrics_import_no_teacher_or_training():
    for source_layer in ("student", "metrics"):
        bad = offending(source_layer, {"teachers", "distill", "demo", "commands"})
        assert not bad, "\n".join(bad)


def test_teachers_import_no_student_training_or_commands():
    bad = offending("teachers", {"student", "distill", "demo", "commands"})
    assert not bad, "\n".join(bad)


def test_only_commands_and_cli_sit_above_demo():
    bad = [line for source_layer in ("io", "student", "metrics", "teachers", "distill")
           for line in offending(source_layer, {"demo", "commands", "cli"})]
    assert not bad, "\n".join(bad)


def test_demo_uses_the_teachers_public_interface_only():
    bad = sorted(f"{source} imports {target}" for source, targets in engine_graph().items()
                 if layer(source) == "demo" for target in targets
                 if layer(target) == "teachers" and target != "DistillSegLib.teachers")
    assert not bad, "\n".join(bad)


def test_no_engine_module_imports_slicer_or_qt():
    bad = sorted(f"{path.relative_to(ROOT)} imports {name}" for path in ENGINE.rglob("*.py")
                 for name in imported_modules(path) if name.split(".")[0] in GUI_MODULES)
    assert not bad, "the engine runs without Slicer:\n" + "\n".join(bad)


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Engine modules ``path`` imports when it runs, function-level imports included.

    ``from package import name`` counts as an import of ``package.name`` when that is a module.
    Imports under ``if TYPE_CHECKING:`` are left out: they never execute, and annotating with a
    type from a module above is not a dependency on it.
    """
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    tree = ast.parse(path.read_text(), str(path))
    skipped = {id(child) for node in ast.walk(tree) if isinstance(node, ast.If)
               and ast.unparse(node.test).endswith("TYPE_CHECKING") for stmt in node.body for child in ast.walk(stmt)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level else node.module)
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return {name for name in names if name in modules and name != module_name(path)}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_cycle_finder_finds_a_cycle():
    """Guard against a finder that can never fail."""
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_engine():
    """A circle means a shared piece lives inside one of its users: move it below both.

    Lazy imports inside functions count: they hide a circle from Python's import machinery,
    not from a reader, and they are how the circles this rule removed had been kept working.
    """
    modules = {module_name(path) for path in ENGINE.rglob("*.py")}
    graph = {module_name(path): runtime_imports(path, modules) for path in ENGINE.rglob("*.py")}
    assert "DistillSegLib.distill.teacher_prompting" in graph["DistillSegLib.distill.pseudo_labels"]
    cycles = import_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(cycle) for cycle in cycles)


# --------------------------------------------------------------------------- the browser front end

WEB = ROOT / "DistillSegWeb"
# The front end's own packages: the engine must run (and `distillseg --help` start) without them.
WEB_ONLY_MODULES = {"DistillSegWeb", "trame", "trame_slicer", "trame_server", "trame_client", "trame_vuetify",
                    "wslink", "aiohttp", "playwright"}
# What needs the Slicer application (Qt): the front end calls the module's logic, never its widget.
QT_ONLY = {"qt", "ctk", "PythonQt", "slicer.util", "DistillSegModuleLib.Widget", "DistillSegModuleLib.WidgetStudy",
           "DistillSegModuleLib.WidgetSegmentation", "DistillSegModuleLib.WidgetTraining",
           "DistillSegModuleLib.Parameters", "DistillSegModuleLib.Install", "DistillSegModuleLib.Samples", "DistillSeg"}


def test_the_front_end_is_read():
    imports = imported_modules(WEB / "workflow.py")
    assert "DistillSegModuleLib.Logic" in imports and "DistillSegWeb.paths" in imports


def test_no_engine_module_imports_the_web_front_end():
    bad = sorted(f"{path.relative_to(ROOT)} imports {name}" for path in ENGINE.rglob("*.py")
                 for name in imported_modules(path) if name.split(".")[0] in WEB_ONLY_MODULES)
    assert not bad, "`distillseg web` only hands over (a subprocess):\n" + "\n".join(bad)


def test_the_web_front_end_imports_no_qt():
    bad = sorted(f"{path.relative_to(ROOT)} imports {name}" for path in WEB.rglob("*.py")
                 for name in imported_modules(path)
                 if name.split(".")[0] in QT_ONLY or any(name == q or name.startswith(q + ".") for q in QT_ONLY))
    assert not bad, "the front end runs on slicer-core, without the Slicer application:\n" + "\n".join(bad)
