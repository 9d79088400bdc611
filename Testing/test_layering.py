"""The engine's folders are its layers: the import graph must keep them so.

Every ``import`` in ``DistillSegLib`` (top-level and inside functions, absolute and relative)
is read with :mod:`ast` and resolved to an engine package; the rules below are the
architecture of ``README.md`` ("Layout") and ``../shared/DESIGN.md``.
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


# --------------------------------------------------------------------------- the browser front end

WEB = ROOT / "DistillSegWeb"
# The front end's own packages: the engine must run (and `distillseg --help` start) without them.
WEB_ONLY_MODULES = {"DistillSegWeb", "trame", "trame_slicer", "trame_server", "trame_client", "trame_vuetify",
                    "wslink", "aiohttp", "playwright"}
# What needs the Slicer application (Qt): the front end calls the module's logic, never its widget.
QT_ONLY = {"qt", "ctk", "PythonQt", "slicer.util", "DistillSegModuleLib.Widget", "DistillSegModuleLib.Parameters",
           "DistillSegModuleLib.Install", "DistillSegModuleLib.Samples", "DistillSeg"}


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
