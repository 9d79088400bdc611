"""The catalogue of bad and unusual inputs, run against the command line: no silent wrong result.

Every input is built from the real cases in ``../shared/data`` into a temporary folder
(edited DICOM headers, sheared or permuted NIfTI, cropped or rotated PETs, edited RTSTRUCTs,
bad files and options, protocol lines for the warm engine) and given to ``distillseg`` as a
user would. Each has what a careful PET reader expects:

* ``refuse``: exit 2 and one ``error:`` line naming the problem (a fragment is checked);
* ``warn``: exit 0, a warning naming the problem, and the result checked where it can be;
* ``correct``: exit 0 and a result that matches an independent computation or a reference
  run on the unedited input.

Verdicts: ``ok``; ``silent wrong`` (exit 0 without the warning, or a wrong result);
``internal error`` (exit 1 or a traceback); ``hang`` (no answer within the time limit);
``unclear`` (refused, but the message does not name the problem); ``refused`` where a
warning or a correct result was possible (not silent, listed apart). Target: 0 silent wrong,
0 internal errors, 0 hangs.

Each command runs in a process forked from one warm parent (torch and MONAI imported once),
with its own stdout/stderr files and a time limit; the engine's inputs go to one real
``distillseg serve`` process. The inputs come from two rounds of hostile testing: round 1
(``Testing/test_cli_errors.py``, ``test_plausibility.py``, ``test_dicom.py``) and round 2
(the engine's protocol, geometry and PET headers). Older JSON files name them by their tracker entries (14, 23).
The student is the bundled ``sts-petct-crop``; everything runs on the STS crops, so the whole
catalogue takes a few minutes on a 2-core CPU::

    nice -n 10 .venv/bin/python benchmarks/bad_inputs.py [--only WORD] [--timeout 180]

Writes ``benchmarks/results/bad_inputs.json`` (every input, expected, got, verdict, the
tally, the machine's load).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")  # forked children: no OpenMP pool inherited mid-flight

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results" / "bad_inputs.json"
MODEL = "sts-petct-crop"

import numpy as np  # noqa: E402


@dataclass
class Ran:
    code: int | None  # None: killed after the time limit
    stdout: str
    stderr: str
    seconds: float


@dataclass
class BadInput:
    """One input of the catalogue: the command line and what a careful reader expects of it."""

    name: str
    round: str  # "round 1" or "round 2"
    kind: str  # "refuse", "warn" or "correct"
    expected: str  # in words, for the table
    argv: list[str] = field(default_factory=list)
    fragment: str = ""  # in the error line (refuse) or on stderr (warn)
    check: Callable[[Ran], tuple[bool, str]] | None = None  # the result, for warn/correct
    hold_lock: Path | None = None  # an output another run is writing (its lock held meanwhile)
    got: str = ""
    verdict: str = ""
    seconds: float = 0.0


# ----------------------------------------------------------------------------- running


def run_cli(argv: list[str], timeout: float, folder: Path) -> Ran:
    """``distillseg ARGV`` in a child forked from this (warm) process; killed after ``timeout`` s."""
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: the command line's own entry point, as the console script runs it
        code = 1
        try:
            os.setpgid(0, 0)
            for fd, path in ((1, out), (2, err)):
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(handle, fd)
                os.close(handle)
            import torch

            torch.set_num_threads(1)
            from DistillSegLib.cli import main

            code = int(main([str(a) for a in argv]) or 0)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported as the child's own traceback
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = started + timeout
    status = None
    while time.perf_counter() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return Ran(None, out.read_text(errors="replace"), err.read_text(errors="replace"), timeout)
    code = os.waitstatus_to_exitcode(status)
    return Ran(code, out.read_text(errors="replace"), err.read_text(errors="replace"), time.perf_counter() - started)


def judge(item: BadInput, ran: Ran) -> tuple[str, str]:
    """``(got, verdict)`` of one run."""
    lines = [line for line in ran.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if ran.code is None:
        return f"no answer in {ran.seconds:.0f} s", "hang"
    if ran.code not in (0, 2) or "Traceback" in ran.stderr or "internal error" in ran.stderr:
        return f"exit {ran.code}: {(lines or ['(nothing on stderr)'])[-1][:160]}", "internal error"
    if ran.code == 2:
        message = errors[-1] if errors else (lines[-1] if lines else "(no message)")
        got = f"exit 2: {message[:200]}"
        if item.kind == "refuse":
            clear = len(errors) == 1 and item.fragment.lower() in errors[0].lower()
            return got, "ok" if clear else "unclear"
        return got, "refused"
    warnings = [line for line in lines if line.lower().startswith("warning")]
    if item.kind == "refuse":
        return f"exit 0 {('(' + warnings[0][:120] + ')') if warnings else 'without a word'}", "silent wrong"
    fine, detail = item.check(ran) if item.check else (True, "")
    if item.kind == "warn":
        named = any(item.fragment.lower() in w.lower() for w in warnings)
        got = f"exit 0, {'warned: ' + next(w for w in warnings if item.fragment.lower() in w.lower())[:150] if named else 'no warning'}"
        got += f"; {detail}" if detail else ""
        return got, "ok" if named and fine else "silent wrong"
    return f"exit 0; {detail}", "ok" if fine else "silent wrong"


# ----------------------------------------------------------------------------- building the inputs


def nifti(volume_array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Save as NIfTI; an affine nibabel cannot turn into a qform (singular) goes in the sform alone."""
    import nibabel

    if abs(np.linalg.det(affine[:3, :3])) > 1e-9:
        nibabel.save(nibabel.Nifti1Image(volume_array, affine), str(path))
        return path
    image = nibabel.Nifti1Image(volume_array, None)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(None, code=0)
    nibabel.save(image, str(path))
    return path


def reordered(path: Path, target: Path, order: tuple[int, int, int], flip_first: bool) -> Path:
    """The same image stored with its axes in ``order`` (and the first stored axis flipped)."""
    import nibabel

    image = nibabel.load(str(path))
    array = np.asanyarray(image.dataobj).transpose(order)
    axes = image.affine[:3, list(order)]
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = axes, image.affine[:3, 3]
    if flip_first:
        array = array[::-1]
        affine[:3, 3] += axes[:, 0] * (array.shape[0] - 1)
        affine[:3, 0] = -axes[:, 0]
    return nifti(np.ascontiguousarray(array), affine, target)


def dicom_copy(files: list[Path], target: Path, edit: Callable | None = None) -> Path:
    """Copies of DICOM files, each edited by ``edit(ds, index)``."""
    import pydicom

    target.mkdir(parents=True)
    for index, file in enumerate(files):
        ds = pydicom.dcmread(file)
        if edit is not None:
            edit(ds, index)
        ds.save_as(target / file.name)
    return target


def radio(ds):
    return ds.RadiopharmaceuticalInformationSequence[0]


def sorted_by_z(folder: Path) -> list[Path]:
    import pydicom

    files = list(folder.glob("*.dcm"))
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def info_json(ran: Ran) -> dict:
    return json.loads(ran.stdout)


def build(work: Path, timeout: float) -> list[BadInput]:  # noqa: C901 - one catalogue, read top to bottom
    import pydicom
    import torch

    from DistillSegLib.io.volume import crop_volume, read_image, write_image

    sts = DATA / "sts-petct"
    case = sts / "STS_001"
    ct, pet, label = case / "CT_image.nii.gz", case / "PET_image.nii.gz", case / "CT_mask.nii.gz"
    ct_volume, pet_volume, label_volume = read_image(ct), read_image(pet), read_image(label)
    dicom7 = DATA / "sts-petct-dicom" / "STS_007"
    dicom9 = DATA / "sts-petct-dicom" / "STS_009"
    raw = DATA / "raw-pet-dicom" / "STS_001"
    items: list[BadInput] = []

    def add(*args, **kwargs) -> BadInput:
        items.append(BadInput(*args, **kwargs))
        return items[-1]

    # -- references, computed once on the unedited inputs
    low, high = ct_volume.world_bounds()
    raw_files = [f for f in sorted_by_z(raw / "image")
                 if low[2] + 20 <= float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) <= high[2] - 20]
    raw_ref = dicom_copy(raw_files, work / "raw_ref")
    reference = run_cli(["info", "--ct", ct, "--pet", raw_ref, "--json"], timeout, work)
    raw_suv_max = info_json(reference)["pet"]["suv_max"]
    ref_out = work / "reference_label.nii.gz"
    ran = run_cli(["predict", "--model", MODEL, "--ct", ct, "--pet", pet, "--roi", "all", "--out", ref_out,
                   "--threads", "1"], timeout, work)
    assert ran.code == 0, ran.stderr
    reference_label = read_image(ref_out).array

    def same_suv_max(ran: Ran) -> tuple[bool, str]:
        got = info_json(ran)["pet"]["suv_max"]
        return abs(got - raw_suv_max) <= 1e-4 * raw_suv_max, f"SUVmax {got:.3f} (unedited series {raw_suv_max:.3f})"

    def pet_variant(name: str, edit: Callable) -> Path:
        return dicom_copy(raw_files, work / name, edit)

    # ===================================================================== round 2
    r = "round 2"
    # -- scan timing (DICOM PET SUV)
    folder = pet_variant("inj_after_scan", lambda ds, i: setattr(radio(ds), "RadiopharmaceuticalStartDateTime",
                                                                  "20000907114511"))
    add("PET injected 25 min after its SeriesTime (StartDateTime)", r, "refuse", "refused naming both times",
        ["info", "--ct", ct, "--pet", folder], "after the scan")
    folder = pet_variant("start_after_scan", lambda ds, i: setattr(radio(ds), "RadiopharmaceuticalStartTime", "114511"))
    add("PET StartTime later than the scan, no date", r, "refuse", "refused naming the times (not the units)",
        ["info", "--ct", ct, "--pet", folder], "after the scan")

    def days_before(ds, i):
        radio(ds).RadiopharmaceuticalStartDateTime = "20000905103500"
    add("PET injected two days before the scan", r, "refuse", "refused (uptake of 27 half-lives)",
        ["info", "--ct", ct, "--pet", pet_variant("two_days", days_before)], "between injection and scan")

    def midnight(ds, i):
        ds.SeriesTime, ds.AcquisitionTime = "002011", "002011"
        ds.SeriesDate = ds.AcquisitionDate = "20000908"
        radio(ds).RadiopharmaceuticalStartTime = "233500"
    add("PET injected before midnight, scanned after (StartTime only)", r, "correct", "SUV as the unedited series",
        ["info", "--ct", ct, "--pet", pet_variant("midnight", midnight), "--json"], check=same_suv_max)

    def colons(ds, i):
        ds.AcquisitionTime, ds.SeriesTime = "11:20:11", "11:20:11"
        radio(ds).RadiopharmaceuticalStartTime = "10:35:00"
    add("times written 11:20:11 (ACR-NEMA form)", r, "correct", "read as HHMMSS: SUV as the unedited series",
        ["info", "--ct", ct, "--pet", pet_variant("colons", colons), "--json"], check=same_suv_max)
    add("SeriesTime 'noon'", r, "refuse", "refused naming the field",
        ["info", "--ct", ct, "--pet", pet_variant("noon", lambda ds, i: setattr(ds, "SeriesTime", "noon"))],
        "SeriesDate/SeriesTime")
    add("PatientWeight differs on one slice", r, "refuse", "refused naming the field",
        ["info", "--ct", ct, "--pet", pet_variant("weight", lambda ds, i: i == 3 and setattr(ds, "PatientWeight", "80"))],
        "PatientWeight differs")
    add("Units GML on one slice of a BQML series", r, "refuse", "refused naming the field",
        ["info", "--ct", ct, "--pet", pet_variant("units", lambda ds, i: i == 3 and setattr(ds, "Units", "GML"))],
        "Units differs")

    # -- gantry tilt
    ct7 = sorted_by_z(dicom7 / "CT" / "image")
    spacing = float(pydicom.dcmread(ct7[0], stop_before_pixels=True).PixelSpacing[0])

    def tilt(ds, i):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + i * spacing, z]
    tilted = dicom_copy(ct7, work / "tilted_ct", tilt)
    rs_dir = work / "tilted_rs"
    shutil.copytree(dicom7 / "CT" / "mask", rs_dir)
    straight_out = work / "straight_convert"
    ran = run_cli(["convert", "--ct", dicom7 / "CT" / "image", "--pet", dicom7 / "PET" / "image", "--mask",
                   dicom7 / "CT" / "mask", "--out", straight_out], timeout, work)
    assert ran.code == 0, ran.stderr
    straight = read_image(straight_out / "CT_image.nii.gz").array
    straight_mask_ml = float((read_image(straight_out / "GTV_Mass_CT.nii.gz").array > 0).sum())
    tilted_out = work / "tilted_convert"

    def tilt_placed(ran: Ran) -> tuple[bool, str]:
        got = read_image(tilted_out / "CT_image.nii.gz").array
        rows = straight.shape[1]
        worst = max(float(np.abs(got[:, k:k + rows, k] - straight[:, :, k]).max()) for k in range(straight.shape[2]))
        voxels = float((read_image(tilted_out / "GTV_Mass_CT.nii.gz").array > 0).sum())
        ok = worst < 1e-2 and abs(voxels - straight_mask_ml) <= 0.01 * straight_mask_ml
        return ok, f"every slice where its position says (max |dHU| {worst:.3g}); RTSTRUCT {voxels:.0f} vs {straight_mask_ml:.0f} voxels"
    add("CT with gantry tilt (slice k shifted k rows in y) + its RTSTRUCT", r, "warn",
        "warned; slices resampled where they are; mask as untilted",
        ["convert", "--ct", tilted, "--pet", dicom7 / "PET" / "image", "--mask", rs_dir, "--out", tilted_out],
        "shifted in-plane", tilt_placed)

    # -- sheared affine, axis order
    affine = ct_volume.affine.copy()
    affine[:3, 2] += 0.3 * affine[:3, 0] / np.linalg.norm(affine[:3, 0]) * np.linalg.norm(affine[:3, 2])
    sheared = nifti(ct_volume.array, affine, work / "sheared_ct.nii.gz")
    add("CT with a sheared affine", r, "refuse", "refused (sheared grid)",
        ["predict", "--model", MODEL, "--ct", sheared, "--pet", pet, "--roi", "all", "--out", work / "sheared_out.nii.gz"],
        "sheared")
    for name, order, flip in (("CT and PET stored (k, i, j), first axis flipped", (2, 0, 1), True),
                              ("CT and PET stored (j, i, k)", (1, 0, 2), False),
                              ("CT and PET with i flipped", (0, 1, 2), True)):
        tag = "".join(map(str, order)) + ("f" if flip else "")
        moved_ct = reordered(ct, work / f"ct_{tag}.nii.gz", order, flip)
        moved_pet = reordered(pet, work / f"pet_{tag}.nii.gz", order, flip)
        out = work / f"label_{tag}.nii.gz"

        def same_mask(ran: Ran, out=out, order=order, flip=flip) -> tuple[bool, str]:
            got = read_image(out).array
            back = (got[::-1] if flip else got).transpose(np.argsort(order))
            differ = int(np.count_nonzero(back != reference_label))
            ml = float(got.sum() * ct_volume.voxel_volume_ml)
            # float32 sforms round a flipped origin by ~1e-5 mm: a few voxels at p = 0.5 may flip.
            return differ <= 1e-3 * reference_label.sum(), f"{ml:.1f} mL, {differ} voxels differ from the file's own order"
        add(name, r, "correct", "the same mask as the file's own order",
            ["predict", "--model", MODEL, "--ct", moved_ct, "--pet", moved_pet, "--roi", "all", "--out", out,
             "--threads", "1"], check=same_mask)

    # -- PET coverage
    n = 40
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    diamond = np.eye(4)
    diamond[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) * 4.0
    half = n * 4.0 / 2 * np.sqrt(2)
    centre = np.array([high[0] + 0.6 * half, high[1] + 0.6 * half, (low[2] + high[2]) / 2])
    diamond[:3, 3] = centre - diamond[:3, :3] @ np.full(3, (n - 1) / 2)
    rotated = nifti(np.ones((n, n, n), np.float32), diamond, work / "pet_rotated_away.nii.gz")
    add("PET rotated: boxes meet, no CT voxel inside it", r, "refuse", "refused (no overlap)",
        ["info", "--ct", ct, "--pet", rotated], "do not overlap")
    box = [slice(0, k) for k in pet_volume.shape]
    box[2] = slice(0, int(pet_volume.shape[2] * 0.22))
    fifth = work / "pet_22pct.nii.gz"
    write_image(crop_volume(pet_volume, tuple(box)), fifth)
    add("PET covering 22% of the CT", r, "warn", "warned with the fraction",
        ["predict", "--model", MODEL, "--ct", ct, "--pet", fifth, "--roi", "all", "--out", work / "fifth.nii.gz",
         "--threads", "1"], "covers only")
    centre_k = int(round((np.linalg.inv(pet_volume.affine) @ (label_volume.affine @ np.append(
        np.argwhere(label_volume.array > 0).mean(axis=0), 1.0)))[2]))
    box[2] = slice(0, centre_k)
    half_pet = work / "pet_cut_at_lesion.nii.gz"
    write_image(crop_volume(pet_volume, tuple(box)), half_pet)

    def cut_flagged(ran: Ran) -> tuple[bool, str]:
        rows = json.loads(ran.stdout)["lesions"]
        coverage = rows[0]["pet_coverage"]
        return 0.3 < coverage < 0.7, f"pet_coverage {coverage:.2f} in the table"
    add("PET edge cutting the lesion in half (stats)", r, "warn", "the lesion named, coverage in the table",
        ["stats", "--ct", ct, "--pet", half_pet, "--label", label, "--json"], "outside the PET's field of view",
        cut_flagged)

    # -- RTSTRUCT contours
    rs = pydicom.dcmread(dicom7 / "CT" / "mask" / "RS.dcm")
    contours = rs.ROIContourSequence[0].ContourSequence
    zs = [float(cn.ContourData[2]) for cn in contours]
    counts = {z: zs.count(z) for z in zs}
    step = 3.27
    single = sorted(z for z in counts if counts[z] == 1 and any(abs(o - z - step) < 0.05 and counts[o] == 1 for o in counts))
    moved_z = single[len(single) // 2]
    next_z = next(o for o in counts if abs(o - moved_z - step) < 0.05)
    off = copy.deepcopy(rs)
    for cn in off.ROIContourSequence[0].ContourSequence:
        if float(cn.ContourData[2]) == moved_z:
            data = [float(v) for v in cn.ContourData]
            data[2::3] = [v + 1.7 for v in data[2::3]]
            cn.ContourData = data
    (work / "rs_off").mkdir()
    off.save_as(work / "rs_off" / "RS.dcm")
    off_out = work / "rs_off_convert"
    k_next = int(round((np.linalg.inv(read_image(straight_out / "CT_image.nii.gz").affine) @ np.array([0, 0, next_z, 1.0]))[2]))
    straight_mask = read_image(straight_out / "GTV_Mass_CT.nii.gz").array

    def next_slice_kept(ran: Ran) -> tuple[bool, str]:
        got = read_image(off_out / "GTV_Mass_CT.nii.gz").array
        kept = bool(np.all(got[:, :, k_next] >= straight_mask[:, :, k_next]))
        return kept, (f"next slice keeps its {int(straight_mask[:, :, k_next].sum())} voxels"
                      if kept else f"next slice lost voxels ({int(got[:, :, k_next].sum())} left)")
    add("RTSTRUCT contour 1.7 mm off its slice", r, "warn", "united with the next slice's contour, warned",
        ["convert", "--ct", dicom7 / "CT" / "image", "--pet", dicom7 / "PET" / "image", "--mask", work / "rs_off",
         "--out", off_out], "fall on a slice", next_slice_kept)
    above = copy.deepcopy(rs)
    top = float(pydicom.dcmread(ct7[-1], stop_before_pixels=True).ImagePositionPatient[2])  # the last CT slice
    for k in (1, 2):
        extra = copy.deepcopy(above.ROIContourSequence[0].ContourSequence[0])
        data = [float(v) for v in extra.ContourData]
        data[2::3] = [top + step * k] * (len(data) // 3)
        extra.ContourData = data
        above.ROIContourSequence[0].ContourSequence.append(extra)
    (work / "rs_above").mkdir()
    above.save_as(work / "rs_above" / "RS.dcm")
    add("RTSTRUCT contours above the last CT slice", r, "warn", "dropped contours counted in a warning",
        ["convert", "--ct", dicom7 / "CT" / "image", "--pet", dicom7 / "PET" / "image", "--mask", work / "rs_above",
         "--out", work / "rs_above_convert"], "2 of")

    def edema_own(ran: Ran) -> tuple[bool, str]:
        rows = json.loads(ran.stdout)["lesions"]
        edema = sum(row["mtv_ml"] for row in rows if row["class"] == "GTV_Edema")
        flagged = all(row["overlaps_with"] for row in rows)
        return abs(edema - 579.0) < 1.0 and flagged, f"GTV_Edema {edema:.1f} mL, overlaps named: {flagged}"
    add("stats on overlapping ROIs (GTV_Mass inside GTV_Edema)", r, "correct",
        "each ROI on its own mask (579 mL), overlap named",
        ["stats", "--ct", ct, "--pet", raw / "image", "--label", raw / "mask", "--json"], check=edema_own)

    # -- siblings of the findings (other header fields, grids, options)
    def admin(ds, i):
        ds.DecayCorrection = "ADMIN"
    factor = 2.0 ** (-2711.0 / 6588.0)  # images corrected to the injection: the dose is not decayed

    def admin_suv(ran: Ran) -> tuple[bool, str]:
        got = info_json(ran)["pet"]["suv_max"]
        return abs(got - raw_suv_max * factor) <= 1e-4 * raw_suv_max, f"SUVmax {got:.3f} (expected {raw_suv_max * factor:.3f})"
    add("PET DecayCorrection ADMIN", r, "correct", "dose undecayed (QIBA)",
        ["info", "--ct", ct, "--pet", pet_variant("admin", admin), "--json"], check=admin_suv)
    add("PET with PatientWeight 0", r, "refuse", "refused naming the field",
        ["info", "--ct", ct, "--pet", pet_variant("weight0", lambda ds, i: setattr(ds, "PatientWeight", "0"))],
        "PatientWeight")
    add("PET without any injection time", r, "refuse", "refused naming the field",
        ["info", "--ct", ct, "--pet", pet_variant("no_start", lambda ds, i: delattr(radio(ds), "RadiopharmaceuticalStartTime"))],
        "RadiopharmaceuticalStartTime")
    add("PET whose half-life differs on one slice", r, "refuse", "refused naming the field",
        ["info", "--ct", ct, "--pet", pet_variant("half_life", lambda ds, i: i == 5 and setattr(
            radio(ds), "RadionuclideHalfLife", "6000"))], "RadionuclideHalfLife differs")
    add("PET AcquisitionTime 'soon' on every slice", r, "refuse", "refused naming the field",
        ["info", "--ct", ct, "--pet", pet_variant("acq_soon", lambda ds, i: setattr(ds, "AcquisitionTime", "soon"))],
        "AcquisitionDate/AcquisitionTime")
    gap = dicom_copy([f for n, f in enumerate(ct7) if n not in (30, 31, 32)], work / "ct_gap")
    add("CT series with three slices missing", r, "warn", "warned; slices interpolated",
        ["info", "--ct", gap, "--pet", dicom7 / "PET" / "image"], "irregular slice spacing")
    twice = dicom_copy(ct7[:10], work / "ct_twice")
    ds = pydicom.dcmread(ct7[5])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.save_as(twice / "copy_of_slice_5.dcm")
    add("CT series with one slice position twice", r, "refuse", "refused", ["info", "--ct", twice, "--pet",
                                                                            dicom7 / "PET" / "image"], "share one slice")
    flat = ct_volume.affine.copy()
    flat[:3, 2] = 0.0
    add("CT with a zero slice spacing in its affine", r, "refuse", "refused",
        ["info", "--ct", nifti(ct_volume.array, flat, work / "ct_flat.nii.gz"), "--pet", pet], "zero")
    tilted_pet = pet_volume.affine.copy()
    angle = np.radians(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    middle = pet_volume.affine @ np.append((np.array(pet_volume.shape) - 1) / 2, 1.0)
    tilted_pet[:3, :3] = rotation @ pet_volume.affine[:3, :3]
    tilted_pet[:3, 3] = middle[:3] - tilted_pet[:3, :3] @ ((np.array(pet_volume.shape) - 1) / 2) + [60, 0, 0]
    add("PET rotated 30 degrees and moved 6 cm (partial cover)", r, "warn", "warned with the fraction",
        ["info", "--ct", ct, "--pet", nifti(pet_volume.array, tilted_pet, work / "pet_rot30.nii.gz")], "covers only")
    add("predict --stats with the PET cut at the lesion", r, "warn", "the lesion named in the warning",
        ["predict", "--model", MODEL, "--ct", ct, "--pet", half_pet, "--roi", "all", "--out", work / "cut.nii.gz",
         "--stats", work / "cut.csv", "--threads", "1"], "outside the PET's field of view")
    lesion_voxels = np.argwhere(label_volume.array > 0)
    corners = (label_volume.affine @ np.c_[[lesion_voxels.min(axis=0), lesion_voxels.max(axis=0)], np.ones(2)].T).T[:, :3]
    roi = ",".join(f"{v:.1f}" for v in [*corners.min(axis=0), *corners.max(axis=0)])
    add("predict --roi around a lesion the PET ends halfway up", r, "warn", "the region named in a warning",
        ["predict", "--model", MODEL, "--ct", ct, "--pet", half_pet, f"--roi={roi}", "--out", work / "cut_roi.nii.gz",
         "--threads", "1"], "region of interest lies")
    add("--prompt-segment=0", r, "refuse", "refused (0 is the background)",
        ["predict", "--teacher", "litemedsam", "--ct", ct, "--pet", pet, "--out", work / "seg0.nii.gz",
         "--prompt-mask", label, "--prompt-points=-70,-12,-791,-", "--prompt-segment=0"], "--prompt-segment")
    add("--roi wholly outside the CT", r, "refuse", "refused",
        ["predict", "--model", MODEL, "--ct", ct, "--pet", pet, "--out", work / "far.nii.gz",
         "--roi=500,500,500,600,600,600"], "outside the CT")
    four_d = nifti(np.stack([ct_volume.array] * 2, axis=-1), ct_volume.affine, work / "ct_4d.nii.gz")
    add("a 4D NIfTI as the CT", r, "refuse", "refused", ["info", "--ct", four_d, "--pet", pet], "3D")

    # -- smaller ones
    add("--prompt-segment=-1", r, "refuse", "refused",
        ["predict", "--teacher", "litemedsam", "--ct", ct, "--pet", pet, "--out", work / "seg_m1.nii.gz",
         "--prompt-mask", label, "--prompt-points=-70,-12,-791,-", "--prompt-segment=-1"], "--prompt-segment")
    add("zero-size --prompt-box", r, "refuse", "refused as --roi is",
        ["predict", "--teacher", "litemedsam", "--ct", ct, "--pet", pet, "--out", work / "flat.nii.gz",
         "--prompt-box=-80,-20,-800,-80,0,-780"], "zero extent")
    evaluation = work / "evaluation"
    for sub in ("pred", "gt"):
        (evaluation / sub).mkdir(parents=True)
    empty = np.zeros(label_volume.shape, np.uint8)
    shifted = np.roll(label_volume.array, 3, axis=0)
    for case_id, predicted, truth in (("A", shifted, label_volume.array), ("B", empty, empty),
                                      ("C", empty, label_volume.array)):
        write_image(label_volume.with_array(predicted.astype(np.uint8)), evaluation / "pred" / f"{case_id}.nii.gz")
        write_image(label_volume.with_array(truth.astype(np.uint8)), evaluation / "gt" / f"{case_id}.nii.gz")

    def hd95_named(ran: Ran) -> tuple[bool, str]:
        line = next((row for row in ran.stdout.splitlines() if row.startswith("mean HD95")), "")
        return "C" in line and "B" in line and "over 1 of 3" in line, line or "no line names the cases left out"
    add("evaluate with one-empty and both-empty cases", r, "correct", "mean HD95 over 1 case, B and C named",
        ["evaluate", "--pred", evaluation / "pred", "--gt", evaluation / "gt"], check=hd95_named)
    locked = work / "locked_out.nii.gz"
    add("predict on an --out another run is writing", r, "refuse", "the second run refused",
        ["predict", "--model", MODEL, "--ct", ct, "--pet", pet, "--roi", "all", "--out", locked], "is writing",
        hold_lock=locked)
    add("a 246-character output name", r, "refuse", "refused before the work",
        ["predict", "--model", MODEL, "--ct", ct, "--pet", pet, "--roi", "all", "--out",
         work / ("x" * 246 + ".nii.gz")], "too long")
    one_slice = work / "one_slice_ct.nii.gz"
    write_image(crop_volume(ct_volume, (slice(0, ct_volume.shape[0]), slice(0, ct_volume.shape[1]), slice(30, 31))),
                one_slice)
    add("a 3D student on a one-slice CT", r, "refuse", "refused",
        ["predict", "--model", MODEL, "--ct", one_slice, "--pet", pet, "--roi", "all", "--out", work / "one.nii.gz"],
        "single voxel thick")

    # ===================================================================== round 1 (listed last)
    r = "round 1"
    (work / "empty.nii.gz").write_bytes(b"")
    (work / "text.nii.gz").write_text("not an image\n")
    (work / "empty.pt").write_bytes(b"")
    (work / "a_file").write_text("a file where a folder is expected\n")
    blocked = work / "a_file" / "x"
    from DistillSegLib.student.model_file import _file_digest, weights_sha256
    from DistillSegLib.student.catalogue import resolve_model

    weights = torch.load(resolve_model(MODEL), weights_only=True)["weights"]
    metadata = json.dumps({"weights_sha256": weights_sha256(weights)})
    torch.save({"format": "distillseg-student/1", "metadata": metadata, "weights": weights,
                "digest": _file_digest(metadata, weights_sha256(weights))}, work / "noconfig.pt")
    negative = label_volume.array.astype(np.int16)
    negative[0, 0, 0] = -1
    write_image(label_volume.with_array(negative), work / "negative_label.nii.gz")
    preds = work / "preds_text"
    preds.mkdir()
    shutil.copy(work / "text.nii.gz", preds / "STS_001.nii.gz")
    out = work / "o.nii.gz"
    base = ["--ct", ct, "--pet", pet]
    for name, argv, fragment in (
        ("info: empty .nii.gz", ["info", "--ct", work / "empty.nii.gz", "--pet", pet], "empty"),
        ("info: text .nii.gz", ["info", "--ct", work / "text.nii.gz", "--pet", pet], "text.nii.gz"),
        ("predict: text .nii.gz", ["predict", "--model", MODEL, "--ct", work / "text.nii.gz", "--pet", pet, "--out", out,
                                   "--roi", "all"], "text.nii.gz"),
        ("evaluate: text .nii.gz prediction", ["evaluate", "--pred", preds, "--gt", sts, "--cases", "STS_001"],
         "STS_001.nii.gz"),
        ("predict: empty .pt", ["predict", "--model", work / "empty.pt", *base, "--out", out, "--roi", "all"], "empty.pt"),
        ("predict: model without configuration", ["predict", "--model", work / "noconfig.pt", *base, "--out", out,
                                                  "--roi", "all"], "no student configuration"),
        ("predict: --out inside a file", ["predict", "--model", MODEL, *base, "--out", blocked / "o.nii.gz", "--roi", "all"],
         "a_file is a file"),
        ("predict: --stats inside a file", ["predict", "--model", MODEL, *base, "--out", out, "--stats",
                                            blocked / "s.csv", "--roi", "all"], "--stats"),
        ("predict: --prob x.txt", ["predict", "--model", MODEL, *base, "--out", out, "--prob", work / "x.txt",
                                   "--roi", "all"], "--prob"),
        ("evaluate: --out inside a file", ["evaluate", "--pred", sts, "--gt", sts, "--cases", "STS_001", "--out",
                                           blocked / "scores.json"], "a_file is a file"),
        ("convert: --out inside a file", ["convert", "--ct", ct, "--pet", pet, "--out", blocked], "a_file is a file"),
        ("info: label value -1", ["info", *base, "--label", work / "negative_label.nii.gz"], "negative values"),
        ("train: --lr nan", ["train", "--data", sts, "--labelled", "STS_001", "--lr", "nan", "--out", work / "m.pt"],
         "--lr"),
        ("predict: a missing option", ["predict", "--model", MODEL, *base], "--out"),
        ("predict: --out is the --ct", ["predict", "--model", MODEL, "--ct", shutil.copy(ct, work / "CT_copy.nii.gz"),
                                        "--pet", pet, "--out", work / "CT_copy.nii.gz", "--roi", "all"], "is also an input"),
        ("predict --teacher --roi=foo", ["predict", "--teacher", "litemedsam", "--prompt-from", label, *base,
                                         "--out", out, "--roi=foo"], "--roi"),
        ("predict: NaN in --roi", ["predict", "--model", MODEL, *base, "--out", out, "--roi=nan,0,0,10,10,10"], "finite"),
        ("train: --labelled ''", ["train", "--data", sts, "--labelled", "", "--out", work / "m2.pt"], "--labelled"),
        ("predict: .dcm output from a NIfTI CT", ["predict", "--model", MODEL, *base, "--out", work / "seg.dcm",
                                                  "--roi", "all"], "DICOM SEG"),
        ("predict: --device cuda without a GPU", ["predict", "--model", MODEL, *base, "--out", out, "--roi", "all",
                                                  "--device", "cuda"], "CUDA"),
        ("stats: --min-lesion-ml -1", ["stats", *base, "--label", label, "--min-lesion-ml", "-1"], "--min-lesion-ml"),
    ):
        if "cuda" in name and torch.cuda.is_available():
            continue
        add(name, r, "refuse", "one error line", argv, fragment)

    bq = work / "pet_bqml_like.nii.gz"
    nifti(pet_volume.array * 1000.0, pet_volume.affine, bq)
    add("PET in Bq/mL-like values (x1000)", r, "refuse", "refused as implausible",
        ["predict", "--model", MODEL, "--ct", ct, "--pet", bq, "--roi", "all", "--out", out], "Bq/mL")
    negative_pet = work / "pet_negative.nii.gz"
    nifti(-pet_volume.array, pet_volume.affine, negative_pet)
    add("PET with negative SUV", r, "refuse", "refused as implausible",
        ["stats", "--ct", ct, "--pet", negative_pet, "--label", label], "negative")
    add("CT and PET swapped", r, "refuse", "refused as implausible",
        ["predict", "--model", MODEL, "--ct", pet, "--pet", ct, "--roi", "all", "--out", out], "does not look like")
    moved = pet_volume.affine.copy()
    moved[:3, 3] += [0, 0, 2000]
    far = nifti(pet_volume.array, moved, work / "pet_far.nii.gz")
    add("PET 2 m away from the CT", r, "refuse", "refused (no overlap)", ["info", "--ct", ct, "--pet", far],
        "do not overlap")
    nan_ct = ct_volume.array.astype(np.float32)
    nan_ct[10, 10, 10] = np.nan
    add("CT with a NaN voxel", r, "refuse", "refused", ["info", "--ct", nifti(nan_ct, ct_volume.affine,
                                                                           work / "ct_nan.nii.gz"), "--pet", pet], "NaN")
    add("RTSTRUCT of another study (STS_009's with STS_007)", r, "refuse", "refused naming both frames",
        ["convert", "--ct", dicom7 / "CT" / "image", "--pet", dicom7 / "PET" / "image", "--mask", dicom9 / "CT" / "mask",
         "--out", work / "other_study"], "frame")
    undefined = copy.deepcopy(rs)
    undefined.ROIContourSequence[0].ReferencedROINumber = 7
    (work / "rs_undefined").mkdir()
    undefined.save_as(work / "rs_undefined" / "RS.dcm")
    add("RTSTRUCT contours of an undefined ROI", r, "refuse", "refused naming the ROI",
        ["convert", "--ct", dicom7 / "CT" / "image", "--pet", dicom7 / "PET" / "image", "--mask", work / "rs_undefined",
         "--out", work / "undefined_convert"], "ROI number 7")
    full = work / "convert_full"
    full.mkdir()
    (full / "old_mask.nii.gz").write_bytes(b"another case")
    add("convert into a folder holding another case", r, "refuse", "refused without --overwrite",
        ["convert", "--ct", dicom7 / "CT" / "image", "--pet", dicom7 / "PET" / "image", "--out", full], "--overwrite")
    partial = work / "preds_partial"
    partial.mkdir()
    shutil.copy(sts / "STS_001" / "CT_mask.nii.gz", partial / "STS_001.nii.gz")

    def missing_counted(ran: Ran) -> tuple[bool, str]:
        cases = len([row for row in ran.stdout.splitlines() if row.startswith("STS_")])
        return cases == 3 and "no prediction" in ran.stdout, f"{cases} cases scored, missing ones as empty"
    add("evaluate with 1 of 3 predictions", r, "warn", "the missing cases named and scored as empty",
        ["evaluate", "--pred", partial, "--gt", sts, "--cases", "STS_001,STS_002,STS_003"], "no prediction",
        missing_counted)
    duplicates = work / "preds_duplicate"
    duplicates.mkdir()
    shutil.copy(sts / "STS_001" / "CT_mask.nii.gz", duplicates / "STS_001.nii.gz")
    shutil.copy(sts / "STS_001" / "CT_mask.nii.gz", duplicates / "STS_001.nii")
    add("evaluate with STS_001.nii and STS_001.nii.gz", r, "refuse", "refused naming both files",
        ["evaluate", "--pred", duplicates, "--gt", sts, "--cases", "STS_001"], "STS_001")
    whole = work / "whole_crop_mask.nii.gz"
    write_image(read_image(sts / "STS_019" / "CT_mask.nii.gz").with_array(
        np.ones(read_image(sts / "STS_019" / "CT_mask.nii.gz").shape, np.uint8)), whole)
    pet19 = read_image(sts / "STS_019" / "PET_image.nii.gz")

    def native_suv_max(ran: Ran) -> tuple[bool, str]:
        # Independently: the PET voxels whose centres lie inside the CT crop's extent, on the PET's own grid.
        crop = read_image(whole)
        centres = np.argwhere(np.ones(pet19.shape, bool)).astype(float)
        in_crop = (np.c_[centres, np.ones(len(centres))] @ (np.linalg.inv(crop.affine) @ pet19.affine).T)[:, :3]
        inside = np.all((in_crop >= -0.5) & (in_crop <= np.array(crop.shape) - 0.5), axis=1)
        expected = float(pet19.array.reshape(-1)[inside].max())
        got = json.loads(ran.stdout)["lesions"][0]["suv_max"]
        return abs(got - expected) <= 1e-3 * expected, f"SUVmax {got:.2f} (native PET {expected:.2f})"
    add("stats SUVmax from the native PET (STS_019, whole-crop mask)", r, "correct", "SUVmax of the PET's own voxels",
        ["stats", "--ct", sts / "STS_019" / "CT_image.nii.gz", "--pet", sts / "STS_019" / "PET_image.nii.gz",
         "--label", whole, "--json"], check=native_suv_max)
    return items


# ----------------------------------------------------------------------------- the engine


ENGINE_LINES = [
    ("engine: one JSON line nested 100,000 deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("engine: \"background\": \"false\"", '{"job": "b1", "argv": ["teachers", "--json"], "background": "false"}',
     '"background" must be true or false'),
    ("engine: cancel of an unknown job", '{"cancel": "never-submitted"}', "no job 'never-submitted' to cancel"),
    ("engine: a JSON array, not an object", "[1, 2, 3]", "not a JSON object"),
    ("engine: argv a string", '{"job": "b2", "argv": "predict --ct x"}', '"argv" must be a non-empty list'),
    ("engine: bytes that are not UTF-8", "\udcff\udcfe{", "not UTF-8"),
    ("engine: a job id that is a boolean", '{"job": true, "argv": ["teachers"]}', '"job" must be a string or an integer'),
    ("engine: argv holding an object", '{"job": "b3", "argv": ["predict", {"x": 1}]}', '"argv" must be a non-empty list'),
    ("engine: \"shutdown\": \"yes\"", '{"shutdown": "yes"}', '"shutdown" must be true'),
]


def run_engine(timeout: float) -> list[BadInput]:
    """All engine inputs to one ``distillseg serve``, then its input closed: every line answered, then ``bye``."""
    items = [BadInput(name, "round 2", "refuse", "an error reply; the engine keeps reading", fragment=fragment)
             for name, _, fragment in ENGINE_LINES]
    closing = BadInput("engine: stdin closed after the lines above", "round 2", "refuse",
                       "bye, exit 0 (no process left)", fragment="bye")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "DistillSegLib", "serve", "--threads", "1"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    payload = b"".join(line.encode("utf-8", "surrogateescape") + b"\n" for _, line, _ in ENGINE_LINES)
    try:
        out, err = process.communicate(payload, timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        code = None
    seconds = time.perf_counter() - started
    replies = []
    for line in out.decode(errors="replace").splitlines():
        try:
            replies.append(json.loads(line))
        except ValueError:
            replies.append({"event": "garbage", "message": line[:100]})
    errors = [m for m in replies if m.get("event") == "error"]
    for item in items:
        reply = next((m for m in errors if item.fragment in m.get("message", "")), None)
        item.seconds = seconds
        if code is None:
            item.got, item.verdict = "no answer", "hang"
        elif reply is None:
            item.got, item.verdict = "no reply naming the problem", "silent wrong"
        else:
            item.got, item.verdict = f"error reply: {reply['message'][:120]}", "ok"
    closing.seconds = seconds
    if code is None:
        closing.got, closing.verdict = f"still running after {timeout:.0f} s", "hang"
    else:
        events = [m.get("event") for m in replies]
        bye = bool(events) and events[-1] == "bye"
        closing.got = f"exit {code}, last event {events[-1] if events else None}"
        closing.verdict = "ok" if code == 0 and bye and "Traceback" not in err.decode(errors="replace") else "internal error"
    return [*items, closing]


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the inputs whose name contains this text")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a command counts as hung")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder of inputs")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"the shared data is not at {DATA} (set DISTILLSEG_DATA)", file=sys.stderr)
        return 2
    import torch  # noqa: F401 - imported once here, inherited by every forked command
    import monai.inferers  # noqa: F401

    from DistillSegLib import cli  # noqa: F401
    from DistillSegLib.atomic import exclusive_lock

    work = Path(tempfile.mkdtemp(prefix="distillseg-bad-inputs-"))
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom on the invalid times written on purpose
            items = build(work, args.timeout)
        if args.only:
            items = [i for i in items if args.only.lower() in i.name.lower()]
        for item in items:
            run_folder = work / "runs"
            run_folder.mkdir(exist_ok=True)
            if item.hold_lock is not None:
                with exclusive_lock(item.hold_lock, "output"):
                    ran = run_cli(item.argv, args.timeout, run_folder)
            else:
                ran = run_cli(item.argv, args.timeout, run_folder)
            item.seconds = ran.seconds
            item.got, item.verdict = judge(item, ran)
            print(f"{item.verdict:<15} {item.name}", flush=True)
        if not args.only or "engine" in args.only.lower():
            items += run_engine(args.timeout)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - started
    tally: dict[str, int] = {}
    for item in items:
        tally[item.verdict] = tally.get(item.verdict, 0) + 1
    width = max(len(i.name) for i in items)
    print(f"\n{'input':<{width}}  {'round':<8}  {'expected':<45}  {'verdict':<14}  got")
    for item in items:
        print(f"{item.name:<{width}}  {item.round:<8}  {item.expected[:45]:<45}  {item.verdict:<14}  {item.got}")
    print(f"\n{len(items)} inputs ({sum(i.round == 'round 2' for i in items)} of round 2, "
          f"{sum(i.round == 'round 1' for i in items)} of round 1): "
          + ", ".join(f"{n} {v}" for v, n in sorted(tally.items())))
    print(f"wall {wall:.0f} s, load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    result = {
        "command": " ".join(["benchmarks/bad_inputs.py", *sys.argv[1:]]),
        "inputs": len(items), "tally": tally,
        "targets": {"silent_wrong": tally.get("silent wrong", 0), "internal_error": tally.get("internal error", 0),
                    "hang": tally.get("hang", 0)},
        "wall_seconds": round(wall, 1), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "cpu_count": os.cpu_count(), "model": MODEL,
        "items": [{"name": i.name, "round": i.round, "kind": i.kind, "expected": i.expected, "got": i.got,
                   "verdict": i.verdict, "seconds": round(i.seconds, 2),
                   "argv": [str(a).replace(str(work), "$WORK").replace(str(DATA), "$DATA") for a in i.argv]}
                  for i in items],
    }
    if not args.only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    bad = tally.get("silent wrong", 0) + tally.get("internal error", 0) + tally.get("hang", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
