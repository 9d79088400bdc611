"""Build the student bundled with the Slicer extension, and measure it honestly.

Two trainings with one recipe (``distillseg train``, supervised: every sts-petct case is
labelled, so there is no unlabelled data to distil from):

1. ``heldout``: trained on the 20 cases outside the demo's validation split
   (``DistillSegLib/demo/split.py``: labelled + unlabelled cases), then evaluated on the
   10 validation cases it never saw (predicted as ``distillseg predict --roi all``: the
   inputs are crops; scored by the code of ``distillseg evaluate``). This Dice is the one
   the catalogue quotes.
2. ``bundle``: the same recipe on all 30 cases, written to
   ``DistillSeg/Resources/Models/sts-petct-crop.pt``; with ``--update-catalogue`` its entry in
   ``Resources/ModelCatalogue.json`` (SHA-256, size, held-out Dice, this command) is rewritten.

3. ``margin`` (optional): the held-out model of stage 1 run inside an ROI (the label's box plus
   10 or 50 mm, as the Slicer module's ROIs are) instead of on the whole crop: the students are
   trained on ~5 cm crops, and this measures what a tighter region of interest costs.

``--promptable`` trains the promptable recipe instead (box, clicks and previous mask as input
channels); with ``--from-prompt-free`` it starts from the prompt-free recipe's model on the same
cases, trained first. The shipped ``sts-petct-crop`` is that student (chosen by a
cross-validation on the training cases, ``benchmarks/protocols/promptable_student_by_training_cv.json``);
its box and click figures come from ``benchmarks/interactive.py`` on the heldout model
(``--interactive``).

Prints a table and writes ``benchmarks/results/bundled_student.json`` (per stage, so a
partial run keeps what it measured). The commands that rebuild the shipped file are in
docs/slicer.md ("The bundled student"):

    DISTILLSEG_DATA=../shared/data .venv/bin/python benchmarks/bundled_student.py \
        --steps 1200 --seed 0 --threads 1 --promptable --from-prompt-free --stages heldout
    .venv/bin/python benchmarks/interactive.py --model WORK/heldout-1200/student.pt --walks '' \
        --promptable WORK/heldout-1200-promptable-from-prompt-free/student.pt --out SCORED.json
    DISTILLSEG_DATA=../shared/data .venv/bin/python benchmarks/bundled_student.py --steps 1200 --seed 0 \
        --threads 1 --promptable --from-prompt-free --stages bundle --interactive SCORED.json --update-catalogue
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL_NAME = "sts-petct-crop"
PROMPTABLE_NAME = "sts-petct-crop-promptable"  # the second bundled student: takes a box and clicks
MODELS = ROOT / "DistillSeg" / "Resources" / "Models"
INTERACTIVE = ROOT / "benchmarks" / "results" / "interactive_side_by_side.json"  # its heldout box and clicks
CATALOGUE = ROOT / "Resources" / "ModelCatalogue.json"
RESULTS = ROOT / "benchmarks" / "results" / "bundled_student.json"
MAX_BYTES = 8 * 1024 * 1024  # the extension's budget for a bundled student


def write_json(path: Path, data: dict) -> None:
    """Atomically: a run killed while writing leaves the previous file whole."""
    from DistillSegLib.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=float) + "\n")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(data: Path, cases: list[str], out: Path, args: argparse.Namespace, promptable: bool | None = None,
          init: Path | None = None) -> tuple[list[str], float]:
    """Run ``distillseg train`` in a child process; ``(command, wall seconds)``.

    ``promptable`` defaults to ``--promptable``; ``init``: the weights to start from (a
    prompt-free model with ``promptable``: it becomes promptable, answering as before)."""
    promptable = args.promptable if promptable is None else promptable
    command = [sys.executable, "-m", "DistillSegLib", "train", "--data", str(data), "--labelled", ",".join(cases),
               "--strategy", "supervised", "--steps", str(args.steps), "--seed", str(args.seed),
               "--threads", str(args.threads), "--device", "cpu", "--out", str(out),
               "--checkpoint", str(Path(args.work) / f"{out.parent.name}-{out.stem}.checkpoint.pt")]  # never beside the bundled file
    if promptable:
        command.append("--promptable")
    if init is not None:
        command += ["--init", str(init)]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return command, time.perf_counter() - started


def start_from_prompt_free(data: Path, cases: list[str], folder: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """The prompt-free recipe's model on ``cases`` (trained into ``folder`` unless already
    there, e.g. by the heldout stage without ``--promptable``), and what made it."""
    model = folder / "student.pt"
    if model.is_file():
        return model, {"model": str(model), "trained": "before this run (reused)", "sha256": sha256_file(model)}
    command, seconds = train(data, cases, model, args, promptable=False)
    return model, {"model": str(model), "command": " ".join(command[1:]), "train_seconds_wall": round(seconds, 1)}


def evaluate_heldout(model_path: Path, data: Path, validation: list[str], folder: Path) -> dict:
    """Dice etc. of a model on the validation cases (``--roi all``: the cases are crops)."""
    from DistillSegLib.commands.evaluate import evaluate_folders, format_table
    from DistillSegLib.io.dataset import find_cases
    from DistillSegLib.io.volume import write_image
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.student.model_file import load_model

    model = load_model(model_path)
    sources = {c.case_id: c for c in find_cases(data)}
    predictions, labels = folder / "predictions", folder / "labels"
    for case_id in validation:
        case = sources[case_id].load()
        write_image(predict_case(model, case, roi="all", device="cpu").label, predictions / f"{case_id}.nii.gz")
        write_image(case.label, labels / f"{case_id}.nii.gz")
    result = evaluate_folders(predictions, labels)
    print(format_table(result))
    return result


def evaluate_roi_margins(model_path: Path, data: Path, validation: list[str], margins: list[float]) -> dict:
    """Dice per validation case with the ROI = label bounding box + each margin (mm).

    A prompt-free student runs inside the ROI; a promptable one gets the ROI as its box, as
    the module's Run gives it (``Jobs.startSegmentation``): what a loose ROI costs it."""
    from DistillSegLib.demo.loop import run_in_roi
    from DistillSegLib.io.dataset import find_cases
    from DistillSegLib.metrics.segmentation import dice
    from DistillSegLib.student.inference import roi_from_mask
    from DistillSegLib.student.model_file import load_model

    model = load_model(model_path)
    sources = {c.case_id: c for c in find_cases(data)}
    cases = {}
    for case_id in validation:
        case = sources[case_id].load()
        cases[case_id] = {str(m): round(float(dice(run_in_roi(model, case, roi_from_mask(case.label, m)).array > 0,
                                                   case.label.array > 0)), 4)
                          for m in margins}
        print(f"{case_id:<10}" + "".join(f"{cases[case_id][str(m)]:>9.3f}" for m in margins), flush=True)
    mean = {str(m): round(sum(c[str(m)] for c in cases.values()) / len(cases), 4) for m in margins}
    print(f"{'mean':<10}" + "".join(f"{mean[str(m)]:>9.3f}" for m in margins))
    return {"roi": "label bounding box + margin (mm)" + (", given as the box prompt" if model.takes_prompts else ""),
            "margins_mm": margins, "mean": mean, "cases": cases}


def update_catalogue(entry: dict) -> None:
    """Replace the bundled student's entry in place (or append it), teachers untouched."""
    catalogue = json.loads(CATALOGUE.read_text())
    students = catalogue.setdefault("students", [])
    names = [s.get("name") for s in students]
    if entry["name"] in names:
        students[names.index(entry["name"])] = entry
    else:
        students.append(entry)
    write_json(CATALOGUE, catalogue)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data"))
                                              / "sts-petct"))
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy CPU)")
    parser.add_argument("--stages", default="heldout,bundle",
                        help="comma-separated: heldout, bundle, margin (default: heldout,bundle)")
    parser.add_argument("--work", default="/tmp/distillseg-bundled-student", help="scratch folder")
    parser.add_argument("--out-model", default=None,
                        help=f"the bundled file (default: {MODELS.relative_to(ROOT)}/{MODEL_NAME}.pt, "
                             f"or {PROMPTABLE_NAME}.pt with --promptable)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--update-catalogue", action="store_true", help="rewrite the student's catalogue entry")
    parser.add_argument("--promptable", action="store_true",
                        help="the promptable recipe (`distillseg train --promptable`): box, clicks and previous mask "
                             "as input channels, trained with simulated prompts; recorded under steps_N_promptable")
    parser.add_argument("--from-prompt-free", action="store_true",
                        help="with --promptable: start from the prompt-free recipe's model on the same cases (the "
                             "heldout stage's WORK/heldout-N/student.pt, trained first if absent; for the bundle, "
                             "WORK/bundle-N/student.pt), its prompt channels weighted zero; recorded under "
                             "steps_N_promptable_from_prompt_free and bundled as sts-petct-crop itself (or as --out-model)")
    parser.add_argument("--interactive", default=str(INTERACTIVE),
                        help="with --promptable --update-catalogue: the interactive.py JSON that scored the heldout "
                             f"model's box and clicks (default: {INTERACTIVE.relative_to(ROOT)})")
    parser.add_argument("--training-cases", metavar="IDS",
                        help="heldout stage: train on these cases instead of the 20 outside the validation split "
                             "(a cross-validation fold; give --validation-cases too)")
    parser.add_argument("--validation-cases", metavar="IDS",
                        help="heldout and margin stages: score these cases instead of the demo's 10 validation cases")
    args = parser.parse_args()
    if bool(args.training_cases) != bool(args.validation_cases):
        parser.error("--training-cases and --validation-cases go together")
    if args.training_cases and "bundle" in args.stages:
        parser.error("--training-cases is for the heldout and margin stages; the bundle trains on every case")
    if args.from_prompt_free and not args.promptable:
        parser.error("--from-prompt-free goes with --promptable")
    if args.out_model is None:
        args.out_model = str(MODELS / f"{default_name(args)}.pt")

    from DistillSegLib.demo.split import SPLIT_SEED, sts_split
    from DistillSegLib.io.dataset import find_cases

    data, work = Path(args.data), Path(args.work)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    all_cases = sorted(c.case_id for c in find_cases(data) if c.labelled)
    split = sts_split(all_cases, SPLIT_SEED)
    validation = list(split.validation)
    heldout_training = sorted(set(all_cases) - set(validation))
    if args.training_cases:  # a fold of a cross-validation inside the training cases
        heldout_training = [c.strip() for c in args.training_cases.split(",") if c.strip()]
        validation = [c.strip() for c in args.validation_cases.split(",") if c.strip()]
        unknown = sorted(set(heldout_training + validation) - set(all_cases))
        if unknown or set(heldout_training) & set(validation):
            parser.error(f"the folds must be disjoint labelled cases of {data} (unknown: {unknown})")
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    key = (f"steps_{args.steps}" + ("_promptable" if args.promptable else "")
           + ("_from_prompt_free" if args.from_prompt_free else ""))
    results[key] = record = results.get(key, {})
    record["recipe"] = {"strategy": "supervised", "steps": args.steps, "seed": args.seed, "threads": args.threads,
                        "student": "default StudentConfig (MONAI UNet 16,32,64,128, 2 residual units)"
                                   + (" + prompt channels box,positive,negative,previous" if args.promptable else "")
                                   + (", started from the prompt-free recipe's model (prompt channels weighted zero)"
                                      if args.from_prompt_free else "")}
    variant = "-promptable" + ("-from-prompt-free" if args.from_prompt_free else "") if args.promptable else ""

    if "heldout" in stages:
        model = work / f"heldout-{args.steps}{variant}" / "student.pt"
        init, started_from = None, None
        if args.from_prompt_free:
            init, started_from = start_from_prompt_free(data, heldout_training, work / f"heldout-{args.steps}", args)
        command, seconds = train(data, heldout_training, model, args, init=init)
        result = evaluate_heldout(model, data, validation, model.parent)
        record["heldout"] = {
            "command": " ".join(command[1:]), **({"started_from": started_from} if started_from else {}),
            "training_cases": heldout_training, "validation_cases": validation,
            "train_seconds_wall": round(seconds, 1), "load_average_1_5_15": list(os.getloadavg()),
            "mean": result["mean"], "cases": result["cases"],
        }
        write_json(results_path, results)
        print(f"held-out Dice {result['mean']['dice']:.3f} on {len(validation)} validation cases "
              f"({args.steps} steps, {seconds:.0f} s wall, load {os.getloadavg()[0]:.1f})")

    if "margin" in stages:
        model = work / f"heldout-{args.steps}{variant}" / "student.pt"
        if not model.is_file():
            raise SystemExit(f"error: the margin stage needs the heldout model {model}: run the heldout stage first")
        print(f"{'case':<10}{'+10 mm':>9}{'+50 mm':>9}")
        record["roi_margin"] = {**evaluate_roi_margins(model, data, validation, [10.0, 50.0]),
                                "load_average_1_5_15": list(os.getloadavg())}
        write_json(results_path, results)

    if "bundle" in stages:
        out = Path(args.out_model)
        out.parent.mkdir(parents=True, exist_ok=True)
        init, started_from = None, None
        if args.from_prompt_free:
            init, started_from = start_from_prompt_free(data, all_cases, work / f"bundle-{args.steps}", args)
        command, seconds = train(data, all_cases, out, args, init=init)
        size = out.stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"error: {out} is {size / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.1f} MB budget")
        record["bundle"] = {"command": " ".join(command[1:]), **({"started_from": started_from} if started_from else {}),
                            "training_cases": all_cases,
                            "train_seconds_wall": round(seconds, 1), "bytes": size, "sha256": sha256_file(out),
                            "load_average_1_5_15": list(os.getloadavg())}
        write_json(results_path, results)
        print(f"bundled student {out} ({size / 1e6:.2f} MB, sha256 {record['bundle']['sha256'][:12]}...) "
              f"trained on {len(all_cases)} cases in {seconds:.0f} s")
        if args.update_catalogue:
            heldout = record.get("heldout")
            if heldout is None:
                raise SystemExit("error: --update-catalogue needs the heldout stage of the same --steps first")
            update_catalogue(catalogue_entry(out, record, heldout, args, Path(args.interactive)))
            print(f"updated {CATALOGUE}")
    return 0


def catalogue_entry(model: Path, record: dict, heldout: dict, args: argparse.Namespace,
                    interactive: Path = INTERACTIVE) -> dict:
    """The catalogue's description of a bundled student (what ``Catalogue``/``catalogue.py`` read);
    its name is the file's (``sts-petct-crop`` or ``sts-petct-crop-promptable``)."""
    name = model.stem
    if name not in (MODEL_NAME, PROMPTABLE_NAME):
        raise SystemExit(f"error: a bundled student is {MODEL_NAME}.pt or {PROMPTABLE_NAME}.pt, not {model.name}")
    start = (", started from the prompt-free recipe's weights" if args.from_prompt_free else "")
    entry = {
        "name": name,
        "title": ("STS PET/CT tumour, crop, promptable: box and clicks (supervised, 30 cases)" if args.promptable
                  else "STS PET/CT tumour, crop (supervised, 30 cases)"),
        "file": f"Models/{model.name}",
        "sha256": record["bundle"]["sha256"],
        "bytes": record["bundle"]["bytes"],
        "field_of_view": "crop",
        "field_of_view_note": "trained on ~5 cm crops around soft-tissue sarcomas: draw an ROI around the lesion"
                              + ("; the ROI is its box: keep it close around the lesion" if args.promptable else ""),
        "trained_on": "all 30 sts-petct cases (IBSI validation set from TCIA Soft-tissue-Sarcoma, CC BY 3.0), "
                      f"supervised{', promptable' if args.promptable else ''}, {args.steps} steps, seed {args.seed}"
                      + start,
        "training_cases": record["bundle"]["training_cases"],
        "heldout_dice": round(heldout["mean"]["dice"], 3),
        "heldout_note": "mean Dice on the demo's 10 validation cases (DistillSegLib/demo/split.py) of the same "
                        "recipe trained on the other 20 cases; the bundled model itself has seen all 30"
                        + (" (without a prompt, on the whole crop)" if args.promptable else ""),
        "heldout_validation_cases": heldout["validation_cases"],
        "rebuild": "DISTILLSEG_DATA=../shared/data .venv/bin/python benchmarks/bundled_student.py "
                   f"--steps {args.steps} --seed {args.seed} --threads {args.threads}"
                   + (" --promptable" if args.promptable else "")
                   + (" --from-prompt-free" if args.from_prompt_free else "")
                   + (f" --out-model {model.relative_to(ROOT)}" if model != MODELS / f"{default_name(args)}.pt" else "")
                   + " --update-catalogue",
    }
    if args.promptable:
        entry["heldout_prompted"] = heldout_prompted(heldout["command"], interactive)
    return entry


def default_name(args: argparse.Namespace) -> str:
    """The bundled file's name without --out-model."""
    return PROMPTABLE_NAME if args.promptable and not args.from_prompt_free else MODEL_NAME


def heldout_prompted(heldout_command: str, interactive: Path = INTERACTIVE) -> dict:
    """Box and click Dice of the promptable heldout model, from ``interactive`` (an
    ``interactive.py`` JSON; by default ``interactive_side_by_side.json``).

    Refused when that file scored another model than the heldout run of this recipe (its
    ``--out`` path), so the catalogue never quotes another model's figures."""
    scored = json.loads(interactive.read_text())
    out = heldout_command.split("--out ", 1)[1].split()[0]
    if scored.get("promptable") != out:
        raise SystemExit(f"error: {interactive.name} scored {scored.get('promptable')}, not the heldout model {out}: "
                         "run benchmarks/interactive.py --promptable on it first")
    mean = scored["mean"]["promptable"]
    return {"note": f"the heldout model (the 20 other cases) on the 10 validation cases, {interactive.name}: "
                    "one box 10 % larger than the tumour, then simulated clicks",
            "source": str(interactive.resolve().relative_to(ROOT)),
            **{key: round(mean[key], 3) for key in ("box", "box+1 clicks", "box+2 clicks", "box+3 clicks")}}


if __name__ == "__main__":
    raise SystemExit(main())
