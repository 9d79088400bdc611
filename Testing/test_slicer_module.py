"""The module as Slicer sees it: its classes, parameters, terminology, sample data, version
claims and Extensions Index entry, checked against Slicer's own source where it is given
(``$SLICER_SOURCE_DIR``, see ``slicer_source.py``) and statically otherwise.

What only the Slicer application can run (the widget, Qt, the Sample Data download, the
PyTorch extension) is covered by the module's self-test ``DistillSegTest`` in Slicer.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "DistillSeg"
MODULE_FILE = MODULE / "DistillSeg.py"
sys.path.insert(0, str(MODULE))

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML scene")

from slicer_source import load_module_file, scripted_module_api, slicer_source  # noqa: E402

# How Slicer constructs each class of a scripted module file (Base/QTGUI/qSlicerScriptedLoadableModule.cxx
# and qSlicerScriptedLoadableModuleWidget.cxx instantiate <Name>(parent) and <Name>Widget(parent); the
# widget, other modules and the self-test build <Name>Logic() and <Name>Test() with no argument).
SLICER_BASES = {
    "DistillSeg": ("ScriptedLoadableModule", ["parent"]),
    "DistillSegWidget": ("ScriptedLoadableModuleWidget", ["parent"]),
    "DistillSegLogic": ("ScriptedLoadableModuleLogic", []),
    "DistillSegTest": ("ScriptedLoadableModuleTest", []),
}


def module_classes() -> dict[str, ast.ClassDef]:
    tree = ast.parse(MODULE_FILE.read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def init_of(cls: ast.ClassDef) -> ast.FunctionDef | None:
    return next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)


def required_arguments(function: ast.FunctionDef) -> list[str]:
    positional = function.args.posonlyargs + function.args.args
    required = positional[: len(positional) - len(function.args.defaults)]
    return [a.arg for a in required[1:]]  # without self


# ------------------------------------------------------------------------- constructing the classes


def test_module_file_classes_have_the_single_slicer_base_and_constructor_slicer_calls():
    """Statically (no Slicer needed): each class derives from its Slicer base only (a second
    base class broke the logic: ScriptedLoadableModuleLogic.__init__ calls super().__init__()
    with no argument), can be built with the arguments Slicer passes, and calls its base's
    __init__."""
    classes = module_classes()
    assert set(SLICER_BASES) <= set(classes)
    for name, (base, slicer_arguments) in SLICER_BASES.items():
        cls = classes[name]
        assert [ast.unparse(b) for b in cls.bases] == [base], f"{name} must derive from {base} only"
        init = init_of(cls)
        if init is None:
            continue
        assert required_arguments(init) == slicer_arguments[: len(required_arguments(init))] and \
            len(required_arguments(init)) <= len(slicer_arguments), \
            f"{name}.__init__ requires {required_arguments(init)}; Slicer passes {slicer_arguments}"
        calls = {ast.unparse(n.func) for n in ast.walk(init) if isinstance(n, ast.Call)}
        assert f"{base}.__init__" in calls, f"{name}.__init__ does not call {base}.__init__"


def test_logic_and_test_classes_construct_with_slicers_own_base_classes():
    """With Slicer's real ScriptedLoadableModule.py on a real scene: ``DistillSegLogic()`` and
    ``DistillSegTest()`` as Slicer code builds them, without Qt (any Qt use raises here)."""
    scene = slicer.vtkMRMLScene()
    with scripted_module_api(scene):
        module = load_module_file(MODULE_FILE)
        logic = module.DistillSegLogic()
        assert logic.moduleName == "DistillSeg"
        assert logic.sceneLogic.scene is scene
        parameters = logic.getParameterNode()
        assert parameters.GetScene() is scene and parameters.GetAttribute("ModuleName") == "DistillSeg"
        assert logic.getParameterNode() is parameters  # a singleton per scene
        with pytest.raises(module.LogicError, match="no CT volume selected"):
            logic.sceneLogic.validateInputs(None, None)
        test = module.DistillSegTest()
        assert callable(test.runTest) and "test_refinement_loop_on_the_sample" in test.moduleTestNames
        logic.sceneLogic.cleanup()


# ------------------------------------------------------------------------- parameters


def test_steps_parameter_is_bounded_like_the_spin_box():
    """Without WithinRange the parameter-node connector opens a QSpinBox to the whole int range
    (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py, QSliderOrSpinBoxToIntConnector)."""
    source = (MODULE / "DistillSegModuleLib" / "Parameters.py").read_text()
    tree = ast.parse(source)
    steps = next(n for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and ast.unparse(n.target) == "steps")
    annotation = ast.unparse(steps.annotation)
    assert "WithinRange(MIN_STEPS, MAX_STEPS)" in annotation and "Default(DEFAULT_STEPS)" in annotation
    constants = {n.targets[0].elts[i].id: n.value.elts[i].value for n in tree.body if isinstance(n, ast.Assign)
                 and isinstance(n.targets[0], ast.Tuple) for i in range(len(n.targets[0].elts))}
    low, high, default = constants["MIN_STEPS"], constants["MAX_STEPS"], constants["DEFAULT_STEPS"]
    assert 1 <= low <= default <= high
    spin = next(w for w in ET.parse(MODULE / "Resources" / "UI" / "DistillSeg.ui").getroot().iter("widget")
                if w.get("name") == "stepsSpinBox")
    numbers = {p.get("name"): int(p.find("number").text) for p in spin.findall("property")}
    assert (numbers["minimum"], numbers["maximum"], numbers["value"]) == (low, high, default)


def test_slicer_validator_refuses_steps_outside_the_range():
    validators = slicer_source("Base", "Python", "slicer", "parameterNodeWrapper", "validators.py")
    namespace: dict = {}
    exec(compile(validators.read_text(), str(validators), "exec"), namespace)  # plain Python, no Qt
    within = namespace["WithinRange"](10, 20000)
    within.validate(1200)
    for bad in (0, -5, 20001):
        with pytest.raises(ValueError):
            within.validate(bad)


# ------------------------------------------------------------------------- terminology


def test_segment_terminology_is_in_the_context_it_names():
    """SCT 108369006 "Neoplasm" is in the DICOM master list, not in the General Anatomy list;
    checked with slicer-core's real terminology logic on Slicer's own terminology files."""
    from DistillSegModuleLib.Logic import DEFAULT_CLASSES, TERMINOLOGY_CONTEXT, terminologyEntry

    resources = slicer_source("Modules", "Loadable", "Terminologies", "Resources")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    master = logic.LoadTerminologyFromFile(str(resources / "SegmentationCategoryTypeModifier-DICOM-Master.json"))
    anatomy = logic.LoadTerminologyFromFile(str(resources / "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json"))
    assert master == TERMINOLOGY_CONTEXT
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(terminologyEntry(DEFAULT_CLASSES[1]), entry)

    def type_codes(context):
        codes = []
        for index in range(logic.GetNumberOfTypesInTerminologyCategory(context, entry.GetCategoryObject())):
            kind = slicer.vtkSlicerTerminologyType()
            logic.GetNthTypeInTerminologyCategory(context, entry.GetCategoryObject(), index, kind)
            codes.append(kind.GetCodeValue())
        return codes

    assert entry.GetTypeObject().GetCodeValue() in type_codes(master)
    assert entry.GetTypeObject().GetCodeValue() not in type_codes(anatomy)  # the old context's list


# ------------------------------------------------------------------------- sample data


def test_sample_data_points_at_the_ibsi_files_that_are_the_shared_data():
    from conftest import require_data
    from DistillSegLib.demo.split import VALIDATION_CASES
    from DistillSegModuleLib import Samples

    folder = require_data("sts-petct", Samples.CASE)
    assert Samples.CASE in VALIDATION_CASES  # a held-out figure exists for it
    assert re.fullmatch(r"[0-9a-f]{40}", Samples.COMMIT)
    for sample in Samples.FILES:
        assert sample.url == (f"https://raw.githubusercontent.com/theibsi/data_sets/{Samples.COMMIT}/"
                              f"ibsi_validation/nifti/{Samples.CASE}/{sample.name}")
        assert hashlib.sha256((folder / sample.name).read_bytes()).hexdigest() == sample.sha256, sample.name
    assert [f.loadFileType for f in Samples.FILES] == ["VolumeFile", "VolumeFile", "SegmentationFile"]


def test_sample_registration_matches_slicers_sample_data_api():
    sample_data = slicer_source("Modules", "Scripted", "SampleData", "SampleData.py")
    tree = ast.parse(sample_data.read_text())
    register = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                    and n.name == "registerCustomSampleDataSource")
    accepted = {a.arg for a in register.args.args + register.args.kwonlyargs}
    ours = next(n for n in ast.walk(ast.parse((MODULE / "DistillSegModuleLib" / "Samples.py").read_text()))
                if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("registerCustomSampleDataSource"))
    assert {k.arg for k in ours.keywords} <= accepted


# ------------------------------------------------------------------------- supported version, index entry


def test_supported_slicer_is_5_10_or_later_everywhere():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert "find_package(Slicer 5.10 REQUIRED)" in cmake
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use in 3D Slicer", 1)[1].split("\n## ", 1)[0]
    assert "3D Slicer 5.10 or later" in section
    assert "5.8 and later" not in readme and "5.8 and later" not in cmake


INDEX_SCHEMA_REQUIRED = ("$schema", "category", "scm_url")  # slicer-extension-catalog-entry-schema-v1.0.2
INDEX_SCHEMA_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                           "dicom_support_rule", "build_subdirectory", "enabled", "tier"}


def index_entry() -> dict:
    return json.loads((ROOT / "DistillSeg.json").read_text())


def test_index_entry_has_the_schema_fields_and_passes_the_index_checks():
    """Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json (required fields,
    no other properties) and Slicer/ExtensionsIndex scripts/check_description_files.py (file name =
    CMake project name, repository name starting with "Slicer", known category, LF endings)."""
    entry = index_entry()
    assert set(INDEX_SCHEMA_REQUIRED) <= set(entry) and set(entry) <= INDEX_SCHEMA_PROPERTIES
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["build_dependencies"] == ["PyTorch"] and isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"project\((\w+)\)", cmake).group(1) == "DistillSeg" == "DistillSeg.json".split(".")[0]
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in cmake and entry["category"] == "Segmentation"
    repository = entry["scm_url"].rstrip("/").split("/")[-1]
    assert repository.startswith("Slicer") and entry["scm_url"].startswith("https://")
    for url in re.findall(r'set\(EXTENSION_(?:HOMEPAGE|ICONURL|SCREENSHOTURLS) "([^"#]+)', cmake):
        assert f"/{repository}" in url, f"{url} is not under the published repository {repository}"
    assert b"\r" not in (ROOT / "DistillSeg.json").read_bytes()
    assert not (ROOT / "DistillSeg.s4ext").exists(), "the index takes JSON entries only"


def test_index_entry_validates_against_slicers_schema():
    """Against the schema file itself (a flat draft-07 object schema: required, no additional
    properties, each property's type, enum and bounds), without a JSON-schema package."""
    schema = json.loads(slicer_source("Schemas", "slicer-extension-catalog-entry-schema-v1.0.2.json").read_text())
    entry = index_entry()
    assert set(schema["required"]) == set(INDEX_SCHEMA_REQUIRED) and set(schema["properties"]) == INDEX_SCHEMA_PROPERTIES
    assert schema["additionalProperties"] is False and set(entry) <= set(schema["properties"])
    assert set(schema["required"]) <= set(entry)
    types = {"string": str, "array": list, "boolean": bool, "integer": int}
    for key, value in entry.items():
        rule = schema["properties"][key]
        assert isinstance(value, types[rule["type"]]) and not (rule["type"] == "integer" and isinstance(value, bool)), key
        assert "enum" not in rule or value in rule["enum"], key
        assert rule.get("minimum", value) <= value <= rule.get("maximum", value) if rule["type"] == "integer" else True
        if rule["type"] == "array":
            assert all(isinstance(item, types[rule["items"]["type"]]) for item in value), key


# ------------------------------------------------------------------------- dependencies in Slicer


def requirements(name: str):
    from DistillSegModuleLib import Dependencies

    return Dependencies.readRequirements(ROOT / "Resources" / name)


SLICER_5_10_SHIPS = {"numpy": "2.0.2", "scipy": "1.13.1", "pydicom": "2.4.4", "simpleitk": "2.5.2",
                     "requests": "2.32.3"}  # Slicer v5.10.0 SuperBuild/External_python-*.cmake, External_SimpleITK
SLICER_5_12_SHIPS = {"numpy": "2.4.6", "scipy": "1.17.1", "pydicom": "3.0.2", "highdicom": "0.27.0",
                     "simpleitk": "2.5.5", "requests": "2.34.2"}  # v5.12.0 / main


@pytest.mark.parametrize("ships", [SLICER_5_10_SHIPS, SLICER_5_12_SHIPS], ids=["5.10", "5.12"])
def test_slicers_own_packages_are_kept_and_pinned(ships):
    from DistillSegModuleLib import Dependencies

    provided = requirements(Dependencies.PROVIDED_NAME)
    assert Dependencies.providedProblems(provided, ships) == []
    pins = Dependencies.constraints(provided, ships).splitlines()
    assert sorted(pins) == sorted(f"{name}=={version}" for name, version in ships.items())
    installed = {r.name for r in requirements(Dependencies.REQUIREMENTS_NAME)}
    assert not installed & ({r.name for r in provided} | set(ships)), "requirements.txt must not replace them"
    torch_missing = [r.name for r in Dependencies.missing(provided, ships)]
    assert torch_missing == ["torch", "torchvision"]  # installed through the PyTorch extension


def test_a_slicer_whose_packages_are_too_old_is_refused_with_the_reason():
    from DistillSegModuleLib import Dependencies

    old = {**SLICER_5_10_SHIPS, "scipy": "1.10.1"}
    problems = Dependencies.providedProblems(requirements(Dependencies.PROVIDED_NAME), old)
    assert problems == ["DistillSeg needs scipy>=1.13, this Slicer has scipy 1.10.1"]


def test_requirements_are_the_engine_dependencies(tmp_path):
    from DistillSegModuleLib import Dependencies

    pyproject = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"dependencies = \[(.*?)\]", pyproject, re.S).group(1)
    engine = {Dependencies.canonical(re.split(r"[=<>]", d)[0]): d for d in re.findall(r'"([^"]+)"', block)}
    installed = {r.name: r.text for r in requirements(Dependencies.REQUIREMENTS_NAME)}
    provided = {r.name: r for r in requirements(Dependencies.PROVIDED_NAME)}
    plotting = {"matplotlib"}  # figures of the demo and benchmarks only
    assert set(installed) | set(provided) == set(engine) - plotting and not set(installed) & set(provided)
    assert all(installed[name] == engine[name] for name in installed), "pins must match pyproject.toml"
    for name, requirement in provided.items():  # the versions this project is developed with fit
        pinned = engine[name].split("==")[1].split()[0] if "==" in engine[name] else None
        assert pinned is None or requirement.satisfiedBy(pinned), (name, pinned)


def test_restart_is_asked_only_for_packages_already_imported():
    from DistillSegModuleLib import Dependencies

    before = {"scipy": "1.13.1", "monai": "1.5.0", "nibabel": "5.4.2"}
    after = {"scipy": "1.13.1", "monai": "1.6.1", "nibabel": "5.4.2", "peft": "0.21.2"}
    assert Dependencies.changedLoadedPackages(before, after, {"monai", "numpy"}) == ["monai 1.5.0 -> 1.6.1"]
    assert Dependencies.changedLoadedPackages(before, after, {"numpy"}) == []
    # A first installation: torch was not there before; the installer imported it afterwards.
    assert Dependencies.changedLoadedPackages(before, {**after, "torch": "2.8.0"}, {"torch", "monai"}) == \
        ["monai 1.5.0 -> 1.6.1"]
    assert Dependencies.changedLoadedPackages({}, {"torch": "2.8.0", "peft": "0.21.2"}, {"torch", "peft"}) == []


def test_pip_failure_is_reported_with_pips_own_message(tmp_path):
    from DistillSegModuleLib import Dependencies

    lines_seen = []
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("pydicom==2.4.4\n")  # what Slicer 5.10 ships
    code, lines = Dependencies.runPip(sys.executable, ["install", "--dry-run", "--no-index", "-c", str(constraints),
                                                       "pydicom>=3.0.1"], lines_seen.append)
    assert code != 0 and lines_seen == lines
    message = Dependencies.pipError(lines)
    assert message.startswith("ERROR") and "pydicom" in message


# ------------------------------------------------------------------------- the bundled student


def bundled_entry(name: str = "sts-petct-crop") -> dict:
    from DistillSegLib.student.catalogue import load_catalogue, student_entry

    entry = student_entry(name, load_catalogue())
    assert entry is not None, f"the catalogue lists no bundled student {name}"
    return entry


def test_bundled_student_is_listed_with_its_facts_and_loads_without_running_code():
    import torch

    from DistillSegLib.demo.split import VALIDATION_CASES
    from DistillSegLib.student.catalogue import student_file
    from DistillSegLib.student.model_file import load_model

    name = "sts-petct-crop"
    entry = bundled_entry(name)
    path = student_file(entry)  # SHA-256 checked against the catalogue
    assert path == MODULE / "Resources" / "Models" / f"{name}.pt"
    assert path.stat().st_size == entry["bytes"] <= 8 * 1024 * 1024
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    payload = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code can run
    assert payload["format"] == "distillseg-student/1"
    model = load_model(path)
    metadata = model.metadata
    assert model.field_of_view == entry["field_of_view"] == "crop"
    assert model.takes_prompts  # one student runs with and without a prompt
    assert sorted(metadata["training_cases"]["labelled"]) == sorted(entry["training_cases"])
    assert len(entry["training_cases"]) == 30 and metadata["strategy"] == "supervised"
    assert sorted(entry["heldout_validation_cases"]) == sorted(VALIDATION_CASES)
    assert 0.6 <= entry["heldout_dice"] <= 1.0
    assert "benchmarks/bundled_student.py" in entry["rebuild"]
    assert ("--promptable" in entry["rebuild"]) == model.takes_prompts
    results = json.loads((ROOT / "benchmarks" / "results" / "bundled_student.json").read_text())
    from_prompt_free = "prompt_channels_added" in metadata.get("init_from", {})  # made promptable by --init
    measured = results[f"steps_{metadata['training']['steps_done']}" + ("_promptable" if model.takes_prompts else "")
                       + ("_from_prompt_free" if from_prompt_free else "")]
    assert round(measured["heldout"]["mean"]["dice"], 3) == entry["heldout_dice"]
    assert measured["bundle"]["sha256"] == entry["sha256"]
    if model.takes_prompts:  # its box and click figures are those of its own heldout twin
        source = entry["heldout_prompted"].get("source", "benchmarks/results/interactive_side_by_side.json")
        scored = json.loads((ROOT / source).read_text())
        assert scored["promptable"] in measured["heldout"]["command"]
        assert entry["heldout_prompted"]["box"] == round(scored["mean"]["promptable"]["box"], 3)
        assert entry["heldout_prompted"]["box+3 clicks"] == round(scored["mean"]["promptable"]["box+3 clicks"], 3)


def test_a_modified_bundled_student_is_refused(tmp_path):
    import shutil

    from DistillSegLib.errors import DistillSegError
    from DistillSegLib.student.catalogue import resolve_model

    entry = bundled_entry()
    root = tmp_path / "install"
    (root / "Resources" / "Models").mkdir(parents=True)
    shutil.copy(ROOT / "Resources" / "ModelCatalogue.json", root / "Resources")
    copy = root / "Resources" / entry["file"]
    data = bytearray((MODULE / "Resources" / entry["file"]).read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(DistillSegError, match="does not match the catalogue"):
        resolve_model("sts-petct-crop", root)
    with pytest.raises(DistillSegError, match="nor is it a bundled model name; bundled: sts-petct-crop"):
        resolve_model("no-such-model", root)


def test_predict_takes_the_bundled_student_by_name(sts_case_dir, tmp_path, capsys):
    from DistillSegLib.cli import main
    from DistillSegLib.io.volume import read_image
    from DistillSegLib.metrics.segmentation import dice

    folder = sts_case_dir("STS_024")  # a demo validation case: the sample data
    out = tmp_path / "label.nii.gz"
    assert main(["predict", "--model", "sts-petct-crop", "--ct", str(folder / "CT_image.nii.gz"),
                 "--pet", str(folder / "PET_image.nii.gz"), "--roi", "all", "--out", str(out),
                 "--device", "cpu", "--threads", "1"]) == 0
    result = dice(read_image(out).array > 0, read_image(folder / "CT_mask.nii.gz").array > 0)
    assert result >= 0.6, f"bundled student Dice {result:.3f} on its sample case"


def test_macos_is_declared_unsupported_in_one_voice_and_refused_by_the_installer():
    """Slicer's macOS Python (x86_64) gets no torch >= 2.8: the installer refuses with the reason,
    and the CMake description, the README and the module's help say the same."""
    from DistillSegModuleLib import Dependencies

    assert Dependencies.platformProblem("Darwin", "x86_64", {}) == Dependencies.MACOS_UNSUPPORTED
    assert "numpy" in Dependencies.MACOS_UNSUPPORTED and "2.2.2" in Dependencies.MACOS_UNSUPPORTED
    assert Dependencies.platformProblem("Darwin", "x86_64", {"torch": "2.8.0"}) is None  # one that has it
    assert Dependencies.platformProblem("Darwin", "arm64", {}) is None
    assert Dependencies.platformProblem("Linux", "x86_64", {}) is None
    assert Dependencies.platformProblem("Windows", "AMD64", {}) is None
    cmake = (ROOT / "CMakeLists.txt").read_text()
    description = cmake.split("set(EXTENSION_DESCRIPTION", 1)[1].split(")\n", 1)[0]
    help_text = (ROOT / "DistillSeg" / "DistillSeg.py").read_text()
    section = (ROOT / "README.md").read_text().split("## Use in 3D Slicer", 1)[1].split("\n## ", 1)[0]
    for text in (description, help_text, section):
        assert "not supported on macOS" in text
        assert "Windows and Linux" in text
    for text in (cmake, section):
        assert "Windows, macOS and Linux" not in text
    assert "platformProblem" in (ROOT / "DistillSeg" / "DistillSegModuleLib" / "Install.py").read_text()
