"""How long a 2D teacher takes to embed whole studies ahead of any prompt (and fill the cache).

LiteMedSAM (or SAM with ``--checkpoint``) encodes every axial slice of each case's CT (on
the CT grid) and PET (on its native grid) into the slice-embedding store
(``$DISTILLSEG_CACHE/embeddings``), as the warm engine does in the background for a loaded
study, so that later prompts — a radiologist's box, a distillation round — cost only the
decoder. Prints seconds per slice and per case and writes JSON after every case.
Slices already in the store are counted as reused, not timed as encoded. Example::

    DISTILLSEG_CACHE=/work/cache DISTILLSEG_EMBEDDING_DISK_GB=30 nice -n 19 \\
        .venv/bin/python benchmarks/embedding.py --threads 1 --out benchmarks/results/embedding.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sts-petct")
    parser.add_argument("--cases", default="all", help="comma-separated case ids, or 'all'")
    parser.add_argument("--teacher", default="litemedsam")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--modalities", default="CT,PET")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embedding.json")
    args = parser.parse_args(argv)

    import torch

    from DistillSegLib.atomic import write_json_atomic
    from DistillSegLib.io.dataset import find_cases
    from DistillSegLib.teachers import load_teacher
    from DistillSegLib.teachers.run import modality_image

    if args.threads:
        torch.set_num_threads(args.threads)
    found = {c.case_id: c for c in find_cases(args.data)}
    cases = list(found.values()) if args.cases == "all" else [found[c.strip()] for c in args.cases.split(",")]
    modalities = [m.strip() for m in args.modalities.split(",")]
    teacher = load_teacher(args.teacher, args.checkpoint)
    store = teacher.store()
    rows: list[dict] = []
    report = {"teacher": args.teacher, "threads": torch.get_num_threads(), "load_average_start": os.getloadavg(),
              "rows": rows}
    print(f"{'case':8s} {'modality':8s} {'slices':>6s} {'encoded':>7s} {'seconds':>8s} {'s/slice':>8s}")
    for case_ref in cases:
        case = case_ref.load()
        for modality in modalities:
            image = modality_image(case, modality)
            misses = store.misses if store else 0
            start = time.perf_counter()
            slices = teacher.embed_volume(image, modality)
            seconds = time.perf_counter() - start
            encoded = (store.misses - misses) if store else slices
            rows.append({"case": case.case_id, "modality": modality, "grid": list(image.shape), "slices": slices,
                         "encoded": encoded, "seconds": round(seconds, 2),
                         "seconds_per_encoded_slice": round(seconds / encoded, 3) if encoded else None,
                         "load_average": os.getloadavg()[0]})
            per = f"{seconds / encoded:8.2f}" if encoded else f"{'-':>8s}"
            print(f"{case.case_id:8s} {modality:8s} {slices:6d} {encoded:7d} {seconds:8.1f} {per}", flush=True)
            write_json_atomic(args.out, report)
    encoded = [r for r in rows if r["encoded"]]
    if encoded:
        total = sum(r["seconds"] for r in encoded) / sum(r["encoded"] for r in encoded)
        report["mean_seconds_per_encoded_slice"] = round(total, 3)
        print(f"mean {total:.2f} s per encoded slice over {sum(r['encoded'] for r in encoded)} slices")
    write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
