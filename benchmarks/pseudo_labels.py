"""Pseudo-label quality: what the teachers give back for a student's prompts, per way of prompting.

The fast signal for the distillation's pseudo-labels: no training, only one teacher round. A student model prompts
LiteMedSAM (CT on the CT grid / PET on its native grid, or both on the student grid) on
unlabelled cases of the demo split; each configuration's teacher outputs and their fusion
are scored against the cases' labels (which training never reads), beside the prompting
student's own Dice. The validation cases are never used. ``--tune`` first tunes each
teacher's decoder on the labelled cases (:mod:`DistillSegLib.teachers.tuning`) and adds
the configurations with the tuned teachers.

    DISTILLSEG_CACHE=/work/cache DISTILLSEG_EMBEDDING_DISK_GB=40 nice -n 5 \\
        .venv/bin/python benchmarks/pseudo_labels.py --model sup200.pt --threads 1 \\
        --cases STS_012,STS_026 --configs student-slice,native-slice,native-components \\
        --out benchmarks/results/pseudo_labels.json

Configurations (``--configs``, comma-separated; ``tuned-`` prefix = the decoder-tuned teachers):
    student-slice        the first version: student grid, one box per slice around all foreground
    native-slice         native grids, the same boxes
    native-components    native grids, one box per 3D component and slice
    native-refine        + one box-refinement pass
    native-extend        + refinement + 3 slices offered past each component's ends
    native-best          component prompts, only the component the teachers rate best kept
    native-confirm       component prompts, components rated >= 0.9 x the best kept
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def configurations():
    from DistillSegLib.distill.pseudo_labels import RoundSettings
    from DistillSegLib.teachers.auto_prompt import AutoPromptSettings

    components = RoundSettings(grid="native", prompts="components")
    return {
        "student-slice": RoundSettings(grid="student", prompts="slice"),
        "native-slice": RoundSettings(grid="native", prompts="slice"),
        "native-components": components,
        "native-refine": replace(components, auto=AutoPromptSettings(refine=1)),
        "native-extend": replace(components, auto=AutoPromptSettings(refine=1, extend_slices=3)),
        "native-best": replace(components, confirm=1.0),
        "native-confirm": replace(components, confirm=0.9),
    }


def fused_labels(outputs) -> dict[str, dict[str, np.ndarray]]:
    """Ways to combine the CT and PET teachers into one pseudo-label (bool, student grid)."""
    fused = {"mean": {}, "both": {}, "either": {}}
    for case_id in outputs.student:
        p_ct, p_pet = outputs.probability["p_ct"][case_id], outputs.probability["p_pet"][case_id]
        fused["mean"][case_id] = 0.5 * (p_ct + p_pet) >= 0.5
        fused["both"][case_id] = (p_ct >= 0.5) & (p_pet >= 0.5)
        fused["either"][case_id] = (p_ct >= 0.5) | (p_pet >= 0.5)
    return fused


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="student model (.pt) that prompts the teachers")
    parser.add_argument("--data", help="sts-petct folder (default: $DISTILLSEG_DATA/sts-petct or ../shared/data/sts-petct)")
    parser.add_argument("--cases", help="unlabelled cases (default: all 15 of the demo split)")
    parser.add_argument("--configs", default="student-slice,native-slice,native-components,native-refine,native-extend")
    parser.add_argument("--tune", type=int, default=0, metavar="STEPS",
                        help="tune each teacher's decoder for STEPS steps on the labelled cases and add tuned- configs")
    parser.add_argument("--tune-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pseudo_labels.json"))
    args = parser.parse_args(argv)

    import torch

    from DistillSegLib.atomic import write_json_atomic
    from DistillSegLib.demo.run import resolve_data_dir
    from DistillSegLib.demo.split import sts_split
    from DistillSegLib.distill.pseudo_labels import audit_round, run_round
    from DistillSegLib.distill.supervised import SupervisedStrategy
    from DistillSegLib.distill.teaching import load_teacher, new_cache
    from DistillSegLib.distill.trainer import Trainer, TrainingOptions
    from DistillSegLib.io.dataset import find_cases
    from DistillSegLib.progress import Progress
    from DistillSegLib.student.model_file import load_model
    from DistillSegLib.student.preprocess import prepare_case

    if args.threads:
        torch.set_num_threads(args.threads)
    data = resolve_data_dir(args.data)
    sources = {c.case_id: c for c in find_cases(data)}
    split = sts_split(list(sources))
    unlabelled_ids = [c.strip() for c in args.cases.split(",")] if args.cases else list(split.unlabelled)
    if any(c not in split.unlabelled for c in unlabelled_ids):
        parser.error("--cases must be unlabelled cases of the demo split (never the validation cases)")
    model = load_model(args.model)
    config = model.config
    progress = Progress()
    unlabelled = [prepare_case(sources[c].load(), config, with_label=False, audit=True) for c in unlabelled_ids]
    labelled = [prepare_case(sources[c].load(), config) for c in split.labelled]
    trainer = Trainer(config, TrainingOptions(steps=1), SupervisedStrategy(), labelled, unlabelled,
                      progress=progress, init_weights=model.network.state_dict())
    base = {"p_ct": (load_teacher("litemedsam", "CT"), "CT"), "p_pet": (load_teacher("litemedsam", "PET"), "PET")}
    teacher_sets = {"": base}
    report = {"benchmark": "pseudo_labels", "command": " ".join([sys.executable, *sys.argv]), "model": args.model,
              "cases": unlabelled_ids, "threads": torch.get_num_threads(), "load_average_start": os.getloadavg(),
              "results": {}, "tuning": {}}
    out = Path(args.out)
    if args.tune:
        from DistillSegLib.distill.pseudo_labels import teacher_image, teacher_label
        from DistillSegLib.teachers.tuning import DecoderTuningConfig, labelled_image, tunable_copy, tune_decoder

        tuned = {}
        for key, (teacher, modality) in base.items():
            copy = tunable_copy(teacher, "decoder")
            images = [labelled_image(copy, teacher_image(c, config, modality, "native"),
                                     teacher_label(c, teacher_image(c, config, modality, "native")), modality)
                      for c in labelled]
            start = time.perf_counter()
            losses = tune_decoder(copy, images, DecoderTuningConfig(steps=args.tune), seed=args.tune_seed,
                                  on_step=lambda s, l: progress.message(f"tune {modality}: step {s}, loss {l:.4f}")
                                  if s % 20 == 0 else None)
            report["tuning"][key] = {"steps": args.tune, "seconds": round(time.perf_counter() - start, 1),
                                     "loss_first_last": [losses[0], losses[-1]], "load_average": os.getloadavg()[0]}
            tuned[key] = (copy, modality)
            del images
        teacher_sets["tuned-"] = tuned
    settings = configurations()
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    for prefix, teachers in teacher_sets.items():
        for name in names:
            start = time.perf_counter()
            outputs = run_round(trainer, teachers, new_cache(), settings[name], network=trainer.network)
            fused = fused_labels(outputs)
            audit = audit_round(trainer.unlabelled, outputs, fused["mean"], 0)
            for way in ("both", "either"):
                extra = audit_round(trainer.unlabelled, outputs, fused[way], 0)
                audit["mean"][f"fused_{way}"] = extra["mean"]["pseudo_label"]
                for case_id, row in extra["cases"].items():
                    audit["cases"][case_id][f"fused_{way}"] = row["pseudo_label"]
            audit["seconds"] = round(time.perf_counter() - start, 1)
            audit["load_average"] = os.getloadavg()[0]
            report["results"][prefix + name] = audit
            print(f"{prefix + name:28s} " + "  ".join(f"{k} {v:.3f}" for k, v in audit["mean"].items())
                  + f"  ({audit['seconds']:.0f} s, load {audit['load_average']:.1f})", flush=True)
            write_json_atomic(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
