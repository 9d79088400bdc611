"""Do the teachers' answers add promptable skill? A promptable student three ways, paired.

From one warm start (``distillseg train --strategy supervised --promptable``, ``--warmup``
steps on the labelled cases), each arm trains ``--steps`` more steps with the same seed:

* ``supervised``: the labelled cases only (simulated boxes and clicks on their labels);
* ``boxself``: plus the unlabelled cases, each perturbed box around the student's own
  prediction answered by the student itself (the control without any teacher);
* ``boxdistil``: the same boxes answered by LiteMedSAM as it answers a radiologist's box.

Each is then used as a radiologist uses it, with ``benchmarks/interactive.py`` on the scored
cases: no prompt, one 10 %-grown box, then 1..3 simulated clicks (LiteMedSAM is not run
there). Per interaction level: the mean Dice per arm and the case-level statistics of
``boxdistil - boxself`` and ``boxdistil - supervised`` (:mod:`case_stats`, one seed: the
bootstrap is over cases only). Writes ``promptable_distillation.json`` under ``--out``::

    .venv/bin/python benchmarks/promptable_distillation.py --out /tmp/promptable_kd --threads 1

Defaults: the demo's 5 labelled cases, its first 6 unlabelled cases (those of the
distillation benchmark) and its 10 validation cases; every setting is a default of
``distillseg train`` (none chosen on these runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ARMS = ("supervised", "boxself", "boxdistil")
LEVELS = ("automatic", "box", "box+1", "box+2", "box+3")


def parse_args(argv=None) -> argparse.Namespace:
    from DistillSegLib.demo.split import LABELLED_CASES, UNLABELLED_CASES, VALIDATION_CASES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sts-petct"))
    parser.add_argument("--out", required=True, help="folder for the models, the per-arm results and the JSON")
    parser.add_argument("--labelled", default=",".join(LABELLED_CASES))
    parser.add_argument("--unlabelled", default=",".join(UNLABELLED_CASES[:6]))
    parser.add_argument("--cases", default=",".join(VALIDATION_CASES), help="scored cases (default: validation)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--warmup", type=int, default=200, help="supervised promptable steps shared by every arm")
    parser.add_argument("--steps", type=int, default=600, help="steps of each arm after the warm start")
    parser.add_argument("--refresh-every", type=int, default=200, help="round length of the box arms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--combine", nargs="+", metavar="JSON",
                        help="train nothing: pool finished single-seed runs (their promptable_distillation.json) "
                             "into one result under --out")
    return parser.parse_args(argv)


def run(command: list[str], log: Path) -> None:
    """Run a step, its output appended to ``log``; a failed step stops the benchmark."""
    print("$ " + " ".join(command), flush=True)
    with open(log, "a") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"error: step failed ({result.returncode}), see {log}")


def train(args, out: Path, name: str, strategy: str, steps: int, init: Path | None, log: Path) -> Path:
    model = out / f"{name}.pt"
    if model.exists():  # resumable: a finished arm is kept
        return model
    command = [sys.executable, "-m", "DistillSegLib", "train", "--data", args.data, "--labelled", args.labelled,
               "--strategy", strategy, "--promptable", "--steps", str(steps), "--seed", str(args.seed),
               "--threads", str(args.threads), "--device", "cpu", "--out", str(model)]
    if strategy != "supervised":
        command += ["--unlabelled", args.unlabelled, "--refresh-every", str(args.refresh_every)]
    if init is not None:
        command += ["--init", str(init), "--warmup-steps", "0"]
    run(command, log)
    return model


def score(args, out: Path, name: str, model: Path, log: Path) -> dict:
    result = out / f"interactive_{name}.json"
    wanted = args.cases.split(",")
    done = json.loads(result.read_text()) if result.exists() else None
    if done is None or [row["case"] for row in done["rows"]] != wanted:  # a run cut short is scored again
        run([sys.executable, "benchmarks/interactive.py", "--promptable", str(model), "--cases", args.cases,
             "--walks", "", "--teacher-clicks", "0", "--no-gt-boxes", "--modalities", "CT", "--threads",
             str(args.threads), "--out", str(result)], log)
    scored = json.loads(result.read_text())
    if [row["case"] for row in scored["rows"]] != wanted:
        raise SystemExit(f"error: {result} scores {[row['case'] for row in scored['rows']]}, not {wanted}")
    return scored


def per_level(interactive: dict) -> dict[str, dict[str, float]]:
    """``{level: {case: Dice}}`` of one arm's ``interactive.py`` rows."""
    levels: dict[str, dict[str, float]] = {level: {} for level in LEVELS}
    for row in interactive["rows"]:
        prompted = row["promptable"]
        levels["automatic"][row["case"]] = prompted["automatic"]
        levels["box"][row["case"]] = prompted["box"]
        for k, click in enumerate(prompted["clicks"], start=1):
            levels.setdefault(f"box+{k}", {})[row["case"]] = click["dice"]
    return levels


def main(argv=None) -> int:
    from DistillSegLib.atomic import write_json_atomic
    from DistillSegLib.demo.split import VALIDATION_CASES

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.combine:
        try:
            result = combine([Path(p) for p in args.combine])
        except (ValueError, OSError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        write_json_atomic(out / "promptable_distillation.json", result)
        print_table(result["mean_dice"], result["comparisons"])
        print(f"wrote {out / 'promptable_distillation.json'} (seeds {result['seeds']})")
        return 0
    log = out / "log.txt"
    started = time.perf_counter()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    warm = train(args, out, "warmup", "supervised", args.warmup, None, log)
    seconds, scores = {}, {}
    for arm in arms:
        begin = time.perf_counter()
        model = train(args, out, arm, arm, args.steps, warm, log)
        seconds[arm] = time.perf_counter() - begin
        scores[arm] = per_level(score(args, out, arm, model, log))
    summary = {arm: {level: float(np.mean(list(v.values()))) for level, v in levels.items() if v}
               for arm, levels in scores.items()}
    comparisons = compare({args.seed: scores})
    result = {"benchmark": "promptable_distillation", "command": " ".join([sys.executable, *sys.argv]),
              "date": time.strftime("%Y-%m-%d"), "device": f"CPU, {os.cpu_count()} cores",
              "load_average_end": os.getloadavg()[0], "scored_on": "validation" if args.cases.split(",") == list(VALIDATION_CASES) else "given cases",
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "combine")},
              "train_seconds": seconds, "mean_dice": summary, "per_case_dice": scores, "comparisons": comparisons,
              "total_seconds": time.perf_counter() - started}
    write_json_atomic(out / "promptable_distillation.json", result)
    print_table(summary, comparisons)
    print(f"wrote {out / 'promptable_distillation.json'}")
    return 0


def compare(scores_by_seed: dict[int, dict]) -> dict:
    """Case-level statistics (:mod:`case_stats`) of each arm against its control, per prompt level.

    ``scores_by_seed``: ``{seed: {arm: {level: {case: Dice}}}}``; the seeds are pooled (the
    bootstrap resamples cases, then seeds within them).
    """
    import case_stats

    comparisons = {}
    for arm, baseline in (("boxdistil", "boxself"), ("boxdistil", "supervised"), ("boxself", "supervised")):
        seeds = [s for s, scores in scores_by_seed.items() if arm in scores and baseline in scores]
        if not seeds:
            continue
        comparisons[f"{arm} - {baseline}"] = {
            level: case_stats.case_statistics({s: scores_by_seed[s][arm][level] for s in seeds},
                                              {s: scores_by_seed[s][baseline][level] for s in seeds})
            for level in LEVELS
            if all(scores_by_seed[s][arm].get(level) and scores_by_seed[s][baseline].get(level) for s in seeds)}
    return comparisons


def print_table(summary: dict, comparisons: dict) -> None:
    import case_stats

    print(f"{'arm':<12}" + "".join(f"{level:>11}" for level in LEVELS))
    for arm, levels in summary.items():
        print(f"{arm:<12}" + "".join(f"{levels.get(level, float('nan')):>11.3f}" for level in LEVELS))
    for name, by_level in comparisons.items():
        for level, stats in by_level.items():
            print(case_stats.describe(f"{name.split(' - ')[0]} ({level})", name.split(" - ")[1], stats))


def combine(paths: list[Path]) -> dict:
    """One result from several single-seed runs of this benchmark: the same settings but the
    seed, each seed once (else :class:`ValueError`). Means are over cases and seeds."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    def fixed(run):
        return {k: v for k, v in run["settings"].items() if k not in ("seed", "threads", "data", "combine")}
    for path, run in zip(paths, runs):
        if fixed(run) != fixed(runs[0]):
            raise ValueError(f"{path}: other settings than {paths[0]}: {fixed(run)} != {fixed(runs[0])}")
    seeds = [run["settings"]["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed given twice: {seeds}")
    scores_by_seed = {run["settings"]["seed"]: run["per_case_dice"] for run in runs}
    arms = [arm for arm in runs[0]["per_case_dice"] if all(arm in run["per_case_dice"] for run in runs)]
    summary = {arm: {level: float(np.mean([np.mean(list(run["per_case_dice"][arm][level].values())) for run in runs]))
                     for level in LEVELS if all(run["per_case_dice"][arm].get(level) for run in runs)}
               for arm in arms}
    return {"benchmark": "promptable_distillation", "combined_from": [str(p) for p in paths],
            "commands": [run["command"] for run in runs], "seeds": seeds,
            "date": time.strftime("%Y-%m-%d"), "device": runs[0]["device"],
            "load_average_end": [run["load_average_end"] for run in runs], "scored_on": runs[0]["scored_on"],
            "settings": {**fixed(runs[0]), "seeds": seeds},
            "train_seconds": {arm: float(np.mean([run["train_seconds"][arm] for run in runs])) for arm in arms},
            "mean_dice": summary, "mean_dice_per_seed": {run["settings"]["seed"]: run["mean_dice"] for run in runs},
            "per_case_dice_per_seed": scores_by_seed, "comparisons": compare(scores_by_seed)}


if __name__ == "__main__":
    sys.exit(main())
