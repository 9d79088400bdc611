"""The module's Logic on a real MRML scene with the warm engine behind its ProcessRunner protocol:
Runs go to one engine that stays up; a killed engine leaves the scene as it was and the next
Run starts a new one; commands the engine does not run (train) go to a plain subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DistillSeg"))

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML scene")

from DistillSegModuleLib.EngineRunner import EngineRunner, engine_arguments  # noqa: E402
from DistillSegModuleLib.Logic import SceneLogic  # noqa: E402
from test_engine import tiny_model  # noqa: E402
from test_slicer_logic import scene_snapshot  # noqa: E402

TIMEOUT_S = 300


@pytest.fixture(scope="module")
def runner():
    engine = EngineRunner(engine_args=["--threads", "1"])
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt", seed=1)


@pytest.fixture
def setup(runner, sts_case_dir):
    scene = slicer.vtkMRMLScene()
    logic = SceneLogic(scene, runner, python=sys.executable)
    folder = sts_case_dir("STS_002")
    ct, pet = logic.loadStudy(folder / "CT_image.nii.gz", folder / "PET_image.nii.gz")
    roi = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(roi)
    bounds = [0.0] * 6
    ct.GetRASBounds(bounds)
    low, high = np.array(bounds[::2]), np.array(bounds[1::2])
    roi.SetXYZ(*((low + high) / 2))
    roi.SetRadiusXYZ(*((high - low) / 4))
    return scene, logic, ct, pet, roi


def run(logic, runner, ct, pet, model, roi, progress=None):
    ended = []
    logic.startSegmentation(ct, pet, model, roi, "cpu", onProgress=progress, onFinished=ended.append)
    runner.wait(TIMEOUT_S)
    return ended[0]


def test_runs_go_to_one_warm_engine(setup, runner, model):
    scene, logic, ct, pet, roi = setup
    stages = []
    first = run(logic, runner, ct, pet, model, roi, lambda p: stages.append(p.stage))
    assert first.ok, first.message
    pid = runner.client.pid
    second = run(logic, runner, ct, pet, model, roi)
    assert second.ok, second.message
    assert runner.client.pid == pid  # the same process answered both
    assert "predict" in stages and "done" in stages  # progress reached the Logic as before
    a, _ = logic.labelFromSegmentation(first.segmentationNode, ct)
    b, _ = logic.labelFromSegmentation(second.segmentationNode, ct)
    np.testing.assert_array_equal(a.array, b.array)


def test_a_killed_engine_leaves_the_scene_as_it_was(setup, runner, model):
    scene, logic, ct, pet, roi = setup
    runner.warmUp(sys.executable)
    runner.client.wait_ready(TIMEOUT_S)
    before = scene_snapshot(scene)
    ended = []
    logic.startSegmentation(ct, pet, model, roi, "cpu", onFinished=ended.append)
    runner.client.kill()
    runner.wait(TIMEOUT_S)
    assert ended and not ended[0].ok and not ended[0].cancelled
    assert "engine was killed" in ended[0].message
    assert scene_snapshot(scene) == before
    again = run(logic, runner, ct, pet, model, roi)  # the next Run starts a new engine
    assert again.ok, again.message


def test_commands_the_engine_does_not_run_go_to_a_subprocess(runner):
    lines, results = [], []
    runner.start([sys.executable, "-m", "DistillSegLib", "train", "--help"], lines.append, results.append)
    assert runner.fallback.is_running()
    runner.wait(TIMEOUT_S)
    assert results[0].ok and any("--strategy" in line for line in lines)
    with pytest.raises(ValueError):
        engine_arguments(["python", "script.py"])
