"""Every distillation strategy vs the supervised student vs the 41%-SUVmax threshold.

Same fixed split as ``distillseg demo`` (DistillSegLib/demo/split.py: STS_001-005
labelled, 10 seeded validation cases, the other 15 unlabelled), the same trainer and
teacher defaults (embedded LiteMedSAM), three training seeds. For each seed the
supervised student is trained first; every distilled student starts from its weights
after ``--warmup-steps`` and trains the remaining steps with its strategy (same total
steps and labelled cases for all; see ``DistillSegLib.demo.run.train_students``).
Validation Dice and HD95 come from the function behind ``distillseg evaluate``. Every gain
is also given at the case level (:mod:`case_stats`: a bootstrap over cases x seeds, the
median case, leave-one-case-out), and, when ``selftrain`` runs, each distillation strategy
is compared with it: the control with the same schedule and no teacher.

The project's target: a distilled student beating the supervised one by >= 3 Dice points
(mean of three seeds) while running >= 20x faster per case than the LiteMedSAM teacher on
both modalities (``--teacher-cases`` times the teacher on the first validation cases).

The protocol (:data:`PROTOCOL`) is what a GPU run should use. On this 2-core CPU the
teacher rounds cost minutes per unlabelled case, so runs are cut with the options below;
every departure from the protocol is written to the JSON under ``cuts`` with the reason.

    .venv/bin/python benchmarks/distillation.py --out benchmarks/results/distillation
    # the CPU runs of benchmarks/results/distillation_muduo_weighted.json (dualview's defaults, then named muduo)
    # and distillation_tskd.json (--strategies tskd); the strategy options of the older
    # runs are in each JSON's "command":
    .venv/bin/python benchmarks/distillation.py --out /tmp/bench/dualview --seeds 0,1,2 --strategies dualview \\
        --steps 600 --warmup-steps 200 --refresh-every 200 --max-unlabelled-cases 6 --teacher-cases 0 --threads 1
    # the control without a teacher, frozen protocol benchmarks/protocols/teacher_vs_selftrain.json
    # (distillation_selftrain_seeds012.json + _seeds34.json; case statistics: benchmarks/case_stats.py)
    .venv/bin/python benchmarks/distillation.py --out /tmp/bench/selftrain --seeds 0,1,2,3,4 --strategies selftrain \\
        --steps 600 --warmup-steps 200 --refresh-every 200 --max-unlabelled-cases 6 --teacher-cases 0 --threads 1
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# The full protocol: the reference supervised student of ../shared/DESIGN.md (1200
# iterations), every validation and unlabelled case of the split, a teacher round every
# 200 steps, three seeds.
PROTOCOL = {"steps": 1200, "warmup_steps": 400, "refresh_every": 200, "max_validation": None,
            "max_unlabelled": None, "seeds": [0, 1, 2]}
DEFAULT_CUT_REASON = ("CPU only (2 shared cores, no GPU lent to this task): LiteMedSAM costs about 2.5 s per axial "
                      "slice and modality here, minutes per unlabelled case and teacher round")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="sts-petct folder (default: $DISTILLSEG_DATA/sts-petct or ../shared/data/sts-petct)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distillation"))
    parser.add_argument("--strategies", help="comma-separated, \"\" for none (default: every registered distillation strategy)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=PROTOCOL["steps"])
    parser.add_argument("--warmup-steps", type=int, default=PROTOCOL["warmup_steps"])
    parser.add_argument("--refresh-every", type=int, default=PROTOCOL["refresh_every"])
    parser.add_argument("--max-val-cases", type=int)
    parser.add_argument("--max-unlabelled-cases", type=int)
    parser.add_argument("--teacher-cases", type=int, default=1,
                        help="time (and score) the LiteMedSAM teacher on this many validation cases (0: skip)")
    parser.add_argument("--strategy-options", default="", metavar="OPTIONS",
                        help="extra `distillseg train` options of every distilled strategy, e.g. \"--consistency 1.0\"")
    parser.add_argument("--dev", action=argparse.BooleanOptionalAction, default=True,
                        help="also score every student on the unlabelled cases against their labels (transductive "
                             "'dev' Dice: what settings are chosen on, never the validation cases; default on)")
    parser.add_argument("--validation", action=argparse.BooleanOptionalAction, default=True,
                        help="score on the validation cases (--no-validation for runs that choose settings)")
    parser.add_argument("--score-on", choices=("validation", "untouched", "labelled-fold"), default="validation",
                        help="cases every student is scored on: the split's 10 validation cases (default), the "
                             "'untouched' unlabelled-pool cases this run does not use as unlabelled studies (with "
                             "--max-unlabelled-cases 6: the 9 cases no setting was ever chosen on), or one "
                             "labelled case held out of training (--hold-out): a cross-validation fold, where "
                             "settings may be chosen")
    parser.add_argument("--hold-out", metavar="CASE",
                        help="with --score-on labelled-fold: the labelled case this fold scores and does not train on")
    parser.add_argument("--ema-decay", type=float, default=0.0,
                        help="distilled students keep an EMA copy that prompts the teachers (0: off)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: every core; 1 is faster "
                        "on a machine busy with other work)")
    parser.add_argument("--cut-reason", default=DEFAULT_CUT_REASON, help="why runs are cut (recorded in the JSON)")
    args = parser.parse_args(argv)
    if (args.score_on == "labelled-fold") != bool(args.hold_out):
        parser.error("--hold-out CASE goes with --score-on labelled-fold, and only with it")
    return args


def cuts_of(args: argparse.Namespace, seeds: list[int]) -> list[dict]:
    """Every setting that departs from :data:`PROTOCOL`, with the reason."""
    used = {"steps": args.steps, "warmup_steps": args.warmup_steps, "refresh_every": args.refresh_every,
            "max_validation": args.max_val_cases, "max_unlabelled": args.max_unlabelled_cases, "seeds": seeds}
    return [{"setting": key, "protocol": PROTOCOL[key], "used": value, "reason": args.cut_reason}
            for key, value in used.items() if value != PROTOCOL[key]]


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from DistillSegLib.commands.evaluate import evaluate_folders
    from DistillSegLib.io.dataset import find_cases
    from DistillSegLib.demo.run import (SUV_METHOD, DemoSettings, predict_student, resolve_data_dir,
                                        run_suv_baseline, run_teacher, train_students, write_labels,
                                        check_strategies)
    from DistillSegLib.demo.split import sts_split
    from DistillSegLib.errors import DistillSegError
    from DistillSegLib.progress import CancelToken, Progress
    from DistillSegLib.student.config import StudentConfig
    from DistillSegLib.student.preprocess import prepare_case
    from DistillSegLib.distill import strategy_names

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies is not None else \
        [s for s in strategy_names() if s != "supervised"]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    try:  # a typo in an option must not cost the supervised arm's training first
        check_strategies(strategies, shlex.split(args.strategy_options or ""))
    except DistillSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    data = resolve_data_dir(args.data)
    sources = {c.case_id: c for c in find_cases(data)}
    split = sts_split(list(sources)).subset(args.max_val_cases, args.max_unlabelled_cases)
    try:
        if args.score_on == "untouched":
            split = split.scored_on_untouched(sts_split(list(sources)))
        elif args.score_on == "labelled-fold":
            split = split.holding_out(args.hold_out)
    except DistillSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress, cancel = Progress(), CancelToken()
    started = time.perf_counter()

    ids = list(split.labelled + split.validation + split.unlabelled)
    cases = {i: sources[i].load() for i in ids}
    validation = [cases[i] for i in split.validation] if args.validation else []
    write_labels(validation, out / "labels")
    dev = [cases[i] for i in split.unlabelled] if args.dev else []
    write_labels(dev, out / "dev_labels")
    suv = run_suv_baseline(validation, out / "predictions" / SUV_METHOD, progress, cancel) if validation else None
    suv_eval = evaluate_folders(out / "predictions" / SUV_METHOD, out / "labels") if validation else None
    config = StudentConfig()
    prepared = {i: prepare_case(cases[i], config, with_label=i not in split.unlabelled, audit=i in split.unlabelled)
                for i in ids}

    runs: list[dict] = []
    teacher_timing: dict = {}
    for seed in seeds:
        settings = DemoSettings(steps=args.steps, warmup_steps=args.warmup_steps, strategies=tuple(strategies),
                                seed=seed, refresh_every=args.refresh_every, val_every=args.steps + 1,
                                strategy_options=tuple(shlex.split(args.strategy_options)), ema_decay=args.ema_decay)
        seed_dir = out / f"seed{seed}"
        errors: dict[str, str] = {}
        trained = train_students(split, prepared, config, settings, seed_dir / "models", progress, cancel, errors)
        runs += [{"method": name, "seed": seed, "error": message} for name, message in errors.items()]
        for name, result in trained.items():
            scores = {}
            if dev:
                predict_student(result["model"], dev, seed_dir / "dev" / name, progress, cancel,
                                f"predict {name} seed {seed} (unlabelled cases)", postprocessed=seed_dir / "dev" / f"{name}+pp")
                for key in (name, f"{name}+pp"):
                    mean = evaluate_folders(seed_dir / "dev" / key, out / "dev_labels")["mean"]
                    scores[key] = {"dev_dice": mean["dice"], "dev_hd95_mm": mean["hd95_mm"]}
            if not validation:
                runs += [{"method": key, "seed": seed, "train_seconds": result["train_seconds"],
                          "load_average": os.getloadavg()[0], **value,
                          "pseudo_label_rounds": result["strategy_settings"].get("pseudo_label_rounds", [])}
                         for key, value in scores.items()]
                continue
            labels, seconds = predict_student(result["model"], validation, seed_dir / "predictions" / name,
                                              progress, cancel, f"predict {name} seed {seed}",
                                              postprocessed=seed_dir / "predictions" / f"{name}+pp")
            evaluation = evaluate_folders(seed_dir / "predictions" / name, out / "labels")
            postprocessed = evaluate_folders(seed_dir / "predictions" / f"{name}+pp", out / "labels")
            runs.append({"method": name, "seed": seed, **scores.get(name, {}), "dice": evaluation["mean"]["dice"],
                         "hd95_mm": evaluation["mean"]["hd95_mm"], "train_seconds": result["train_seconds"],
                         "load_average": os.getloadavg()[0],
                         "inference_seconds_per_case": float(np.mean(list(seconds.values()))),
                         "per_case_dice": {c["case_id"]: c["dice"] for c in evaluation["cases"]},
                         "inference_seconds": seconds,
                         "pseudo_label_rounds": result["strategy_settings"].get("pseudo_label_rounds", [])})
            runs.append({"method": f"{name}+pp", "seed": seed, **scores.get(f"{name}+pp", {}),
                         "dice": postprocessed["mean"]["dice"],
                         "hd95_mm": postprocessed["mean"]["hd95_mm"], "train_seconds": result["train_seconds"],
                         "postprocessing": "components with mean probability >= 0.8 kept (largest always)",
                         "per_case_dice": {c["case_id"]: c["dice"] for c in postprocessed["cases"]}})
            if seed == seeds[0] and name == (strategies[0] if strategies else "supervised") and args.teacher_cases:
                from DistillSegLib.demo.run import timing_teacher

                teacher = timing_teacher()
                subset = validation[: args.teacher_cases]
                prompts = {i: v.array for i, v in labels.items()}
                both = [run_teacher(teacher, subset, prompts, modality, out / "teacher" / modality.lower(),
                                    progress, cancel, f"teacher {modality}") for modality in ("CT", "PET")]
                per_case = {c.case_id: both[0][c.case_id] + both[1][c.case_id] for c in subset}
                student = float(np.mean([seconds[c.case_id] for c in subset]))
                teacher_timing = {"prompted_by": name, "cases": list(per_case),
                                  "teacher_seconds_per_case_ct_plus_pet": float(np.mean(list(per_case.values()))),
                                  "student_seconds_per_case": student,
                                  "ratio": float(np.mean(list(per_case.values()))) / student,
                                  "teacher_dice": {m: evaluate_folders(out / "teacher" / m, out / "labels",
                                                                       [c.case_id for c in subset])["mean"]["dice"]
                                                   for m in ("ct", "pet")}}
        # written after every seed, so a run cut short still leaves its finished seeds
        summarise(args, data, split, strategies, seeds, runs, suv, suv_eval, teacher_timing, started, out)

    result = summarise(args, data, split, strategies, seeds, runs, suv, suv_eval, teacher_timing, started, out)
    print(format_table(result))
    print(f"wrote {out / 'distillation.json'}")
    return 0


def summarise(args, data, split, strategies, seeds, runs, suv, suv_eval, teacher_timing, started, out) -> dict:
    """Mean and spread per method over the seeds finished so far; writes ``distillation.json``."""
    import torch

    from DistillSegLib.atomic import write_json_atomic
    from DistillSegLib.demo.run import SUV_METHOD

    done = sorted({r["seed"] for r in runs if "dice" in r or "dev_dice" in r})
    summary = {}
    if suv_eval is not None:
        summary[SUV_METHOD] = {"runs": 1, "dice_mean": suv_eval["mean"]["dice"], "dice_sd": 0.0,
                               "hd95_mean": suv_eval["mean"]["hd95_mm"], "hd95_sd": 0.0, "train_seconds_mean": None,
                               "inference_seconds_per_case": suv["inference_seconds_per_case"],
                               "note": "deterministic: one run stands for every seed"}
    for name in ["supervised", *strategies, "supervised+pp", *[f"{s}+pp" for s in strategies]]:
        ok = [r for r in runs if r["method"] == name and ("dice" in r or "dev_dice" in r)]
        dice_mean, dice_sd = mean_sd([r.get("dice") for r in ok])
        hd_mean, hd_sd = mean_sd([r.get("hd95_mm") for r in ok])
        dev_mean, dev_sd = mean_sd([r.get("dev_dice") for r in ok])
        summary[name] = {"runs": len(ok), "dice_mean": dice_mean, "dice_sd": dice_sd, "hd95_mean": hd_mean,
                         "hd95_sd": hd_sd, "dev_dice_mean": dev_mean, "dev_dice_sd": dev_sd,
                         "dev_hd95_mean": mean_sd([r.get("dev_hd95_mm") for r in ok])[0],
                         "train_seconds_mean": mean_sd([r["train_seconds"] for r in ok])[0],
                         "inference_seconds_per_case": mean_sd([r.get("inference_seconds_per_case") for r in ok])[0],
                         "failed": [r["error"] for r in runs if r["method"] == name and "error" in r]}
    base = summary["supervised"]["dice_mean"]
    for name in strategies:
        if summary[name]["dice_mean"] is not None and base is not None:
            summary[name]["gain_over_supervised_points"] = 100 * (summary[name]["dice_mean"] - base)
        for suffix, baseline in (("", "supervised"), ("+pp", "supervised+pp")):
            summary[name + suffix]["paired"] = paired_differences(runs, name + suffix, baseline)
            summary[name + suffix]["paired_dev"] = paired_differences(runs, name + suffix, baseline, "dev_")
            summary[name + suffix]["case_stats"] = case_level(runs, name + suffix, baseline)
            if "selftrain" in strategies and name != "selftrain":  # what the teacher adds over self-training
                summary[name + suffix]["case_stats_vs_selftrain"] = case_level(runs, name + suffix, "selftrain" + suffix)

    result = {
        "benchmark": "distillation", "command": " ".join([sys.executable, *sys.argv]),
        "device": f"CPU, {os.cpu_count()} cores, torch {torch.__version__}",
        "load_average_end": os.getloadavg()[0],
        "data": str(data), "scored_on": args.score_on + (f" ({args.hold_out} held out)" if args.hold_out else ""),
        "split": {**split.to_dict(), "validation_used": list(split.validation),
                                     "unlabelled_used": list(split.unlabelled)},
        "protocol": PROTOCOL, "cuts": cuts_of(args, seeds),
        "settings": {"steps": args.steps, "warmup_steps": args.warmup_steps, "refresh_every": args.refresh_every,
                     "seeds": seeds, "strategies": strategies, "strategy_options": args.strategy_options},
        "summary": summary, "runs": runs, "teacher_speed": teacher_timing,
        "target": "distilled - supervised >= 3 Dice points (mean of 3 seeds) and student >= 20x faster than "
                  "LiteMedSAM on CT + PET per case",
        "total_seconds": time.perf_counter() - started,
    }
    result["seeds_finished"] = done
    write_json_atomic(out / "distillation.json", result)
    return result


def case_level(runs: list[dict], name: str, baseline: str) -> dict | None:
    """Case-level statistics of ``name`` - ``baseline`` on the validation cases
    (:mod:`case_stats`: case x seed bootstrap, median case, leave-one-case-out); None
    before both arms have a seed in common."""
    import case_stats

    arm, base = case_stats.per_case_dice(runs, name), case_stats.per_case_dice(runs, baseline)
    if not set(arm) & set(base):
        return None
    return {"baseline": baseline, **case_stats.case_statistics(arm, base)}


def paired_differences(runs: list[dict], name: str, baseline: str = "supervised", prefix: str = "") -> dict:
    """Distilled minus supervised (``baseline``), seed by seed (same warm start, split and steps): Dice points
    and HD95 mm per seed, their means and two-sided 95 % t intervals (n - 1 degrees of freedom).
    ``prefix="dev_"``: the same on the unlabelled cases' scores."""
    from scipy import stats

    dice_key, hd95_key = f"{prefix}dice", f"{prefix}hd95_mm"
    by_seed = {(r["method"], r["seed"]): r for r in runs if r.get(dice_key) is not None}
    seeds = sorted(s for (m, s) in by_seed if m == name and (baseline, s) in by_seed)

    def interval(values: list[float]) -> dict:
        if not values:
            return {"mean": None, "ci95": None}
        mean = float(np.mean(values))
        if len(values) < 2:
            return {"mean": mean, "ci95": None}
        half = float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
        return {"mean": mean, "ci95": [mean - half, mean + half]}

    dice = [100 * (by_seed[(name, s)][dice_key] - by_seed[(baseline, s)][dice_key]) for s in seeds]
    hd95 = [by_seed[(name, s)][hd95_key] - by_seed[(baseline, s)][hd95_key] for s in seeds
            if by_seed[(name, s)].get(hd95_key) is not None and by_seed[(baseline, s)].get(hd95_key) is not None]
    return {"seeds": seeds, "dice_points": dice, "dice": interval(dice), "hd95_mm": hd95, "hd95": interval(hd95),
            "every_seed_positive": bool(dice) and all(d > 0 for d in dice)}


def format_table(result: dict) -> str:
    def f(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [f"{'method':<16}{'runs':>5}{'Dice mean':>11}{'sd':>7}{'HD95 mm':>10}{'sd':>7}{'dev Dice':>10}{'train s':>9}"
             f"{'infer s':>9}{'gain pts':>10}"]
    for name, s in result["summary"].items():
        lines.append(f"{name:<16}{s['runs']:>5}{f(s['dice_mean']):>11}{f(s['dice_sd']):>7}{f(s['hd95_mean'], 1):>10}"
                     f"{f(s['hd95_sd'], 1):>7}{f(s.get('dev_dice_mean')):>10}{f(s['train_seconds_mean'], 0):>9}"
                     f"{f(s['inference_seconds_per_case'], 2):>9}{f(s.get('gain_over_supervised_points'), 1):>10}")
        for error in s.get("failed") or []:
            lines.append(f"  failed: {error[:100]}")
        scored_on = result.get("scored_on", "validation")
        for key, where in (("paired", f"{scored_on} cases"), ("paired_dev", "unlabelled (dev)")):
            paired = s.get(key)
            if paired and paired["seeds"]:
                ci = paired["dice"]["ci95"]
                lines.append(f"  paired vs supervised on {where}, seeds {paired['seeds']}: Dice points "
                             + ", ".join(f"{d:+.1f}" for d in paired["dice_points"])
                             + f"; mean {paired['dice']['mean']:+.1f}"
                             + (f" (95% CI over seeds {ci[0]:+.1f} .. {ci[1]:+.1f})" if ci else "")
                             + (f"; HD95 mm mean {paired['hd95']['mean']:+.1f}" if paired["hd95"]["mean"] is not None else ""))
        for key in ("case_stats", "case_stats_vs_selftrain"):
            if s.get(key):
                import case_stats

                lines.append("  " + case_stats.describe(name, s[key]["baseline"], s[key]))
    speed = result.get("teacher_speed")
    if speed:
        lines.append(f"teacher LiteMedSAM CT+PET {speed['teacher_seconds_per_case_ct_plus_pet']:.1f} s/case vs student "
                     f"{speed['student_seconds_per_case']:.2f} s/case: {speed['ratio']:.1f}x "
                     f"(cases {', '.join(speed['cases'])}; teacher Dice CT {f(speed['teacher_dice']['ct'])}, "
                     f"PET {f(speed['teacher_dice']['pet'])})")
    for cut in result["cuts"]:
        lines.append(f"cut: {cut['setting']} {cut['protocol']} -> {cut['used']}")
    if result["cuts"]:
        lines.append(f"why: {result['cuts'][0]['reason']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
