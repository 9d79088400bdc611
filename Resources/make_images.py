"""Draws the extension icon and the README diagram (run from the repository root:
``python Resources/make_images.py``). Kept so the images can be regenerated, not hand-edited."""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyBboxPatch, FancyArrowPatch
import numpy as np

# Icon: a PET "hot spot" inside a CT body outline, with a small student network glyph.
fig = plt.figure(figsize=(1.28, 1.28), dpi=100)
ax = fig.add_axes([0, 0, 1, 1]); ax.set_xlim(0, 1); ax.set_ylim(0, 1); ax.axis("off")
ax.add_patch(FancyBboxPatch((0.04, 0.04), 0.92, 0.92, boxstyle="round,pad=0,rounding_size=0.16", fc="#1f3b57", ec="none"))
ax.add_patch(matplotlib.patches.Ellipse((0.5, 0.52), 0.74, 0.56, fc="#9aa7b4", ec="#e6ecf2", lw=2))
yy, xx = np.mgrid[0:1:200j, 0:1:200j]
hot = np.exp(-(((xx - 0.58) / 0.12) ** 2 + ((yy - 0.55) / 0.09) ** 2))
ax.imshow(np.ma.masked_less(hot, 0.08), extent=(0, 1, 0, 1), origin="lower", cmap="hot", vmin=0, vmax=1.1, alpha=0.95, zorder=3)
ax.add_patch(matplotlib.patches.Ellipse((0.58, 0.55), 0.26, 0.2, fc="none", ec="#d8654f", lw=2.4, zorder=4))
for x, n in ((0.2, 3), (0.3, 2)):
    for i in range(n):
        ax.add_patch(Circle((x, 0.2 + 0.07 * i - 0.035 * (n - 1) + 0.035), 0.025, fc="#f5c542", ec="none"))
ax.text(0.5, 0.86, "DS", ha="center", va="center", fontsize=13, color="white", weight="bold")
fig.savefig("DistillSeg/Resources/Icons/DistillSeg.png", transparent=True)
fig.savefig("Resources/DistillSeg.png", transparent=True)
plt.close(fig)

# Diagram of the annotation-refinement loop.
fig, ax = plt.subplots(figsize=(8.0, 4.2), dpi=100)
ax.set_xlim(0, 10); ax.set_ylim(0, 5.2); ax.axis("off")
boxes = {
    "load": (0.2, 3.6, "1. Load PET/CT\n(files or DICOM;\nPET picked by modality)"),
    "run": (3.6, 3.6, "2. Run the student\n(ROI for crop models;\nprogress bar, cancel)"),
    "fix": (7.0, 3.6, "3. Correct in the\nSegment Editor\n(lesion table updates)"),
    "add": (7.0, 0.5, "4. Add to training set\n(nnU-Net layout,\nid DS_<hash>, no PHI)"),
    "dist": (3.6, 0.5, "5. Distil a new student\n(supervised / MuDuo /\nKnowSAM / TS-KD)"),
    "teach": (0.2, 0.5, "Teachers (frozen)\nLiteMedSAM, SAM,\nSAM-Med3D, SegAnyPET"),
}
centres = {}
for key, (x, y, text) in boxes.items():
    colour = "#fdebd0" if key == "teach" else "#d6eaf8"
    ax.add_patch(FancyBboxPatch((x, y), 2.8, 1.25, boxstyle="round,pad=0.05,rounding_size=0.15", fc=colour, ec="#1f3b57", lw=1.4))
    ax.text(x + 1.4, y + 0.62, text, ha="center", va="center", fontsize=9)
    centres[key] = (x + 1.4, y + 0.62)

def arrow(a, b, text="", dx=0.0, dy=0.0, style="-|>", colour="#1f3b57"):
    (x0, y0), (x1, y1) = a, b
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=16, color=colour, lw=1.6))
    if text:
        ax.text((x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy, text, ha="center", fontsize=8, color=colour)

arrow((3.05, 4.22), (3.6, 4.22))
arrow((6.45, 4.22), (7.0, 4.22))
arrow((8.4, 3.55), (8.4, 1.8))
arrow((7.0, 1.12), (6.45, 1.12))
arrow((4.9, 1.8), (4.9, 3.55), "new student\nselected", dx=-0.75, dy=0.0)
arrow((3.0, 1.12), (3.6, 1.12), colour="#a0522d")
ax.text(3.3, 1.95, "pseudo-\nlabels", ha="center", fontsize=8, color="#a0522d")
ax.text(5.0, 5.0, "DistillSeg in 3D Slicer: the annotation-refinement loop", ha="center", fontsize=11, weight="bold")
ax.text(5.0, 0.1, "Long work runs as PythonSlicer -m DistillSegLib ... (JSON progress lines).  Not for clinical use.",
        ha="center", fontsize=8, color="#555555")
fig.savefig("Resources/refinement-loop.png", bbox_inches="tight")
