"""A radiologist's box on a tumour of ~60 slices through the warm engine, with and without embeddings.

STS_004 has the longest tumour of sts-petct (53 CT slices); the box is its CT mask's bounding
box grown by 10% (a hand-drawn ROI). In one engine (``--threads``, a private, empty
embedding cache so that every embedding is really computed):

1. ``cold``: the study's background embedding (``embed``, CT and PET, one slice per batch)
   is queued, and the box prompt on the CT right after it: the prompt goes first (the
   embedding pauses) and encodes the slices it needs itself;
2. ``background embedding``: how long the embedding of every CT and PET slice takes (from
   its submission to its end, minus the time the prompt held the engine);
3. ``warm``: the same box on the CT and on the PET again, ``--repeats`` times each: decoder
   only, the slice embeddings in the engine's memory;
4. ``correction``: the warm CT result corrected by one click at the deepest point of its
   largest error region against the ground truth (SAM-Med3D's click simulation).

Times are end to end from the client (``submit`` to ``finished``: reading the study,
the teacher, writing the label map and its provenance). Dice against the CT mask is given
for orientation (the interactive accuracy benchmark is ``benchmarks/interactive.py``)::

    .venv/bin/python benchmarks/engine_box_prompt.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="STS_004")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_box_prompt.json"))
    args = parser.parse_args()


    from DistillSegLib.engine.client import EngineClient
    from DistillSegLib.io.volume import read_image
    from interactive import box_around, dice, simulated_click, text_box, text_points

    folder = DATA / "sts-petct" / args.case
    truth = read_image(folder / "CT_mask.nii.gz")
    low, high = box_around(truth, 0.10)
    inputs = ["--ct", str(folder / "CT_image.nii.gz"), "--pet", str(folder / "PET_image.nii.gz")]
    work = Path(tempfile.mkdtemp(prefix="distillseg-box-"))
    env = {**os.environ, "DISTILLSEG_CACHE": str(work / "cache"), "DISTILLSEG_EMBEDDING_MEMORY_MB": "4096",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    client = EngineClient(engine_args=["--threads", str(args.threads)], env=env)
    client.wait_ready(600)
    report: dict = {"case": args.case, "threads": args.threads, "box_ras_mm": [*low, *high],
                    "tumour_slices": int((truth.array > 0).any(axis=(0, 1)).sum()), "load_average_start": os.getloadavg()}

    def box_job(name: str, modality: str, extra: list[str] = ()) -> dict:
        out = work / f"{name}.nii.gz"
        load, begin = os.getloadavg()[0], time.perf_counter()
        result = client.wait(client.submit(["predict", "--teacher", "litemedsam", f"--prompt-box={text_box(low, high)}",
                                            "--modality", modality, *inputs, "--out", str(out), *extra]), timeout=3600)
        seconds = time.perf_counter() - begin
        if not result.ok:
            raise SystemExit(f"{name}: {result.message}")
        score = dice(read_image(out).array > 0, truth.array > 0)
        print(f"{name:24s} {seconds:7.2f} s  Dice {score:.3f}  (load {load:.1f})", flush=True)
        return {"name": name, "modality": modality, "seconds": round(seconds, 2), "dice_vs_ct_mask": round(score, 4),
                "load_average": round(load, 2), "output": str(out)}

    try:
        embed_start = time.perf_counter()
        embed_events: list[dict] = []
        embed = client.submit(["embed", "--teacher", "litemedsam", *inputs, "--batch-size", "1"],
                              on_message=embed_events.append, background=True)
        cold = box_job("cold CT (prompt first)", "CT")
        held = cold["seconds"]
        embedded = client.wait(embed, timeout=7200)
        if not embedded.ok:
            raise SystemExit(f"embed: {embedded.message}")
        done = next(m for m in reversed(embedded.messages) if m.get("stage") == "done")
        background = time.perf_counter() - embed_start - held
        report["background_embedding"] = {"seconds_without_the_prompt": round(background, 1), "slices": done["slices"],
                                          "encoded": done["encoded"], "seconds_per_encoded_slice":
                                          round(background / max(1, done["encoded"]), 2),
                                          "paused": any(m.get("event") == "paused" for m in embed_events)}
        print(f"background embedding      {background:7.1f} s for {done['slices']} slices "
              f"({done['encoded']} encoded; the cold prompt encoded the rest)", flush=True)
        report["cold"] = cold
        report["warm"] = [box_job(f"warm {modality} #{n + 1}", modality) for modality in ("CT", "PET")
                          for n in range(args.repeats)]
        previous = report["warm"][0]["output"]
        point, positive = simulated_click(read_image(previous), truth, seed=0)
        report["correction"] = box_job("correction CT (1 click)", "CT",
                                       ["--prompt-mask", previous, f"--prompt-points={text_points([point], [positive])}"])
        for modality in ("CT", "PET"):
            times = [r["seconds"] for r in report["warm"] if r["modality"] == modality]
            report[f"warm_{modality}_median_seconds"] = statistics.median(times)
    finally:
        client.shutdown()
    report["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2, default=float))
    print(f"warm box prompt median: CT {report['warm_CT_median_seconds']:.2f} s, PET "
          f"{report['warm_PET_median_seconds']:.2f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
