"""The annotation-refinement loop, measured: does each round of corrected cases make the next cheaper?

The loop of ``DistillSegLib/demo/loop.py`` (start: a student trained on the demo split's 5
labelled cases; each round: it segments the next 5 cases of a seeded order of the 15
unlabelled cases, a simulated radiologist corrects them to the reference, they join the
training set, a new student is distilled ``--init`` from the previous one and scored on the
10 validation cases; beside it, the same cases trained from scratch), run through the Slicer
module's own scene logic (``DistillSeg/DistillSegModuleLib/Logic.py`` on a real slicer-core MRML
scene): *Run* (``startSegmentation``: an engine process, the ROI placed around the tumour with
the module's margin, ``placeRoiAroundSegmentation``), the correction (the segment's voxels
replaced by the reference, ``setSegmentMask``), *Add to training set* (``addToTrainingSet``:
the nnU-Net training set, ``DS_<hash>`` ids), *Distil* (``startDistillation``). Validation
scoring runs in this process with the engine's ``predict_case`` and ``evaluate_folders``.

Two arms: ``supervised``, and ``distillation`` (``--strategy``, default dualview, with the pool's
cases not yet corrected as unlabelled studies of the training set). Every arm of every seed
keeps its record in ``WORK/seed<S>/<arm>/loop.json`` after each round; running the same
command again continues where it stopped, and ``--summarise`` rewrites the table, JSON and
figure from every record in ``WORK`` (seeds and arms may run as separate commands).

The demo split has 15 unlabelled cases, so rounds of 5 give 3 rounds (5 -> 20 labelled
cases): 4 rounds (5 -> 25) would need 5 validation cases in the training set.

    DISTILLSEG_DATA=../shared/data DISTILLSEG_CACHE=/work/cache DISTILLSEG_EMBEDDING_DISK_GB=40 \\
        .venv/bin/python benchmarks/refinement_loop.py --seeds 0,1 --arms supervised
    ... --seeds 0,1 --arms distillation --strategy tskd --scratch-arms ""   # the run in docs/methods.md
    ... --summarise      # table, benchmarks/results/refinement_loop.json and .png from every record
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "DistillSeg"))

RESULTS = ROOT / "benchmarks" / "results" / "refinement_loop.json"
FIGURE = ROOT / "benchmarks" / "results" / "refinement_loop.png"
DISTIL_TIMEOUT_S = 4 * 3600


class SceneWorkbench:
    """The loop's actions through the module's ``SceneLogic`` on a slicer-core MRML scene.

    Each case is loaded as the module loads files (CT, PET and the reference label as a
    segmentation), then the scene is cleared: one study at a time, as a radiologist works.
    """

    def __init__(self, cancel=None, timeout_s: float = DISTIL_TIMEOUT_S) -> None:
        import slicer

        from DistillSegLib.progress import CancelToken

        from DistillSegModuleLib.Logic import SceneLogic
        from DistillSegModuleLib.Nodes import ensureSegmentationConverters
        from DistillSegModuleLib.ProcessRunner import SubprocessRunner

        ensureSegmentationConverters()
        self.scene = slicer.vtkMRMLScene()
        self.logic = SceneLogic(self.scene, SubprocessRunner(), python=sys.executable)
        self.timeout_s = timeout_s
        self.cancel = cancel or CancelToken()

    def close(self) -> None:
        self.logic.cleanup()

    def _wait(self, start) -> Any:
        """``start(onFinished)``, poll the engine process until it ends; its JobResult. A cancel
        request cancels the job as the module's Cancel button does."""
        from DistillSegLib.errors import DistillSegError

        ended: list = []
        start(ended.append)
        deadline = time.monotonic() + self.timeout_s
        while self.logic.runner.poll():
            if self.cancel.cancelled or time.monotonic() > deadline:
                self.logic.cancel()
            time.sleep(0.1)
        self.cancel.check()
        if not ended[0].ok:
            raise DistillSegError(ended[0].message)
        return ended[0]

    def _load(self, case):
        """CT, PET and the reference segmentation of a case, loaded from its files."""
        self.scene.Clear(0)
        ct, pet = self.logic.loadStudy(case.ct.meta["path"], case.pet.meta["path"])
        reference = self.logic.importLabelmap(case.label.meta["path"], ct, name=f"{case.case_id} reference")
        return ct, pet, reference

    def add(self, dataset: Path, case, labelled: bool) -> str:
        ct, pet, reference = self._load(case)
        try:
            return self.logic.addToTrainingSet(dataset, ct, pet, reference if labelled else None)
        finally:
            self.scene.Clear(0)

    def segment_and_correct(self, dataset: Path, case, model: Path):
        ct, pet, reference = self._load(case)
        try:
            roi = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "DistillSeg ROI")
            self.logic.placeRoiAroundSegmentation(roi, reference, ct)  # the module's margin
            job = self._wait(lambda done: self.logic.startSegmentation(ct, pet, model, roi, "cpu", onFinished=done))
            prediction, _ = self.logic.labelFromSegmentation(job.segmentationNode, ct)
            corrected, _ = self.logic.labelFromSegmentation(reference, ct)
            self.logic.setSegmentMask(job.segmentationNode, corrected)  # the radiologist's correction
            return prediction, self.logic.addToTrainingSet(dataset, ct, pet, job.segmentationNode)
        finally:
            self.scene.Clear(0)

    def distil(self, dataset: Path, strategy: str, out: Path, init: Path | None, steps: int,
               extra: Sequence[str]) -> None:
        self._wait(lambda done: self.logic.startDistillation(dataset, strategy, out, initModel=init, steps=steps,
                                                             extra=list(extra), onFinished=done))


def parse_args(argv=None) -> argparse.Namespace:
    from DistillSegLib.demo.loop import ARMS, LoopSettings

    defaults = LoopSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="sts-petct folder (default: $DISTILLSEG_DATA/sts-petct or ../shared/data/sts-petct)")
    parser.add_argument("--work", default="/tmp/distillseg-refinement-loop",
                        help="models, training sets and per-arm records (default: %(default)s)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--figure", default=str(FIGURE))
    parser.add_argument("--seeds", default="0,1", help="loop seeds: pool order and training seed (default 0,1)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated (default {','.join(ARMS)})")
    parser.add_argument("--strategy", default=defaults.strategy, help="the distillation arm's strategy")
    parser.add_argument("--strategy-options", default="", metavar="OPTIONS",
                        help="extra `distillseg train` options of the distillation arm")
    parser.add_argument("--refresh-every", type=int, default=defaults.refresh_every)
    parser.add_argument("--round-size", type=int, default=defaults.round_size)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--initial-steps", type=int, default=defaults.initial_steps,
                        help="steps of the initial student and of each from-scratch comparison")
    parser.add_argument("--round-steps", type=int, default=defaults.round_steps, help="steps of each round's Distil")
    parser.add_argument("--scratch-arms", default=",".join(defaults.scratch_arms),
                        help="arms also trained from scratch at each round (\"\": none)")
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--max-val-cases", type=int, help="first N validation cases only (smoke runs)")
    parser.add_argument("--backend", choices=("scene", "engine"), default="scene",
                        help="scene: the module's SceneLogic on slicer-core (default); engine: the engine "
                             "functions it calls")
    parser.add_argument("--summarise", action="store_true", help="only rewrite the results from the records in WORK")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace):
    from DistillSegLib.demo.loop import LoopSettings

    return LoopSettings(round_size=args.round_size, rounds=args.rounds, initial_steps=args.initial_steps,
                        round_steps=args.round_steps,
                        scratch_arms=tuple(a for a in args.scratch_arms.split(",") if a.strip()),
                        strategy=args.strategy, strategy_options=tuple(shlex.split(args.strategy_options)),
                        refresh_every=args.refresh_every, threads=args.threads)


def collect_records(work: Path) -> list[dict]:
    """Every arm record under ``work`` (``seed<S>/<arm>/loop.json``), by seed then arm."""
    return [json.loads(path.read_text()) for path in sorted(work.glob("seed*/*/loop.json"))]


def write_results(work: Path, results: Path, figure: Path, command: str) -> dict:
    """Summary, table, JSON and figure of every record in ``work``; arms whose records disagree
    on settings are refused (they would be averaged together)."""
    import torch

    from DistillSegLib.atomic import write_json_atomic
    from DistillSegLib.demo.figures import plot_refinement_loop
    from DistillSegLib.demo.loop import format_table, summarise
    from DistillSegLib.errors import DistillSegError

    records = collect_records(work)
    for arm in {r["arm"] for r in records}:
        kinds = {json.dumps(r["settings"], sort_keys=True) for r in records if r["arm"] == arm}
        if len(kinds) > 1:
            raise DistillSegError(f"the {arm} records in {work} were made with different settings: {sorted(kinds)}")
    summary = summarise(records)
    earlier = json.loads(results.read_text()).get("commands", []) if results.is_file() else []
    result = {
        "benchmark": "refinement_loop", "commands": list(dict.fromkeys([*earlier, command])),
        "device": f"CPU, {os.cpu_count()} cores (shared), torch {torch.__version__}",
        "load_average_at_write": [round(v, 2) for v in os.getloadavg()],
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        "summary": summary, "table": format_table(summary),
        "records": [_slim(r) for r in records],
    }
    write_json_atomic(results, result)
    if summary["arms"]:
        plot_refinement_loop(summary, figure, "DistillSeg refinement loop on sts-petct (demo split; "
                             f"{max(r['seeds'] for rows in summary['arms'].values() for r in rows)} seed(s))")
    return result


def _slim(record: dict) -> dict:
    """A record without its absolute work paths' bulk (kept: file names)."""
    def name(value):
        return Path(value).name if isinstance(value, str) else value

    rounds = []
    for r in record["rounds"]:
        scratch = r.get("scratch")
        if scratch and "model" in scratch:
            scratch = {**scratch, "model": name(scratch["model"]), "init": name(scratch["init"])}
        rounds.append({**r, "model": name(r["model"]), "init": name(r["init"]),
                       "predicted_by": name(r.get("predicted_by")), "scratch": scratch})
    return {**record, "rounds": rounds}


def main(argv=None) -> int:
    args = parse_args(argv)
    from DistillSegLib.demo.loop import EngineWorkbench, run_loop
    from DistillSegLib.demo.run import resolve_data_dir
    from DistillSegLib.demo.split import sts_split
    from DistillSegLib.errors import CancelledError, DistillSegError
    from DistillSegLib.io.dataset import find_cases
    from DistillSegLib.progress import CancelToken, Progress

    import torch

    torch.set_num_threads(args.threads)  # validation scoring in this process: 1 is fastest on a busy CPU
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    work, results, figure = Path(args.work), Path(args.results), Path(args.figure)
    try:
        if not args.summarise:
            data = resolve_data_dir(args.data)
            split = sts_split([c.case_id for c in find_cases(data)]).subset(args.max_val_cases)
            settings = settings_from(args)
            cancel = CancelToken()
            workbench = SceneWorkbench(cancel) if args.backend == "scene" else \
                EngineWorkbench(settings.roi_margin_mm, cancel=cancel)
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            arms = [a.strip() for a in args.arms.split(",") if a.strip()]
            with cancel.on_signals():
                run_loop(workbench, data, split, seeds, arms, settings, work, Progress(), cancel,
                         on_round=lambda record: write_results(work, results, figure, command))
        result = write_results(work, results, figure, command)
    except CancelledError as exc:
        print(f"cancelled: {exc} (run the same command again to continue)", file=sys.stderr)
        return 130
    except DistillSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result["table"])
    for arm, target in result["summary"]["targets"].items():
        print(f"{arm}: {json.dumps(target)}")
    print(f"wrote {results} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
