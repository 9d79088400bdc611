"""A real PET/CT case for Slicer's Sample Data module (and the self-test): one crop of the
public IBSI soft-tissue-sarcoma validation set.

Source: theibsi/data_sets on GitHub, folder ``ibsi_validation/nifti`` (IBSI validation set
from the TCIA Soft-tissue-Sarcoma collection, CC BY 3.0; PET in SUVbw, crops 5 cm around the
tumour, by the IBSI authors with MIRP). The files are fetched at a fixed commit and checked by
SHA-256; they are byte-identical to ``../shared/data/sts-petct/<case>`` (checked by
``Testing/test_slicer_module.py``). The case is one of the demo's validation cases
(``DistillSegLib/demo/split.py``), so a student trained without it has been measured on it.

Registered the way lassoan/SlicerMONAIAuto3DSeg does (``registerSampleData`` on
``startupCompleted``), with ``SampleData.SampleDataLogic.registerCustomSampleDataSource``
(Modules/Scripted/SampleData/SampleData.py, Slicer v5.10.0 and main: same signature).
"""

from __future__ import annotations

from dataclasses import dataclass

REPOSITORY = "theibsi/data_sets"
COMMIT = "6da96021bc91faf4c0cb7fd7fa56a4225d2064a8"  # master, 2024-08-14
CASE = "STS_024"
CATEGORY = "DistillSeg"
SAMPLE_NAME = f"DistillSeg PET/CT {CASE}"


@dataclass(frozen=True)
class SampleFile:
    """One file of the sample: where it is, what it holds, how Slicer loads it."""

    name: str  # file name in the IBSI case folder
    sha256: str
    nodeName: str
    loadFileType: str  # Slicer IO file type: "VolumeFile" or "SegmentationFile"

    @property
    def path(self) -> str:
        return f"ibsi_validation/nifti/{CASE}/{self.name}"

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/{self.path}"

    @property
    def cacheName(self) -> str:
        """File name in Slicer's download cache (unique across samples)."""
        return f"DistillSeg-{CASE}-{self.name}"


FILES = (
    SampleFile("CT_image.nii.gz", "f0e10fc67c3680314978d3c38a8cd363c8a3246c3636d598ee930f54ce8d90e8",
               f"{CASE} CT", "VolumeFile"),
    SampleFile("PET_image.nii.gz", "fa41670431c91eb7a5f7e56cc6b5d0c0363f5d900f903fd479f996e1f288b9ae",
               f"{CASE} PET", "VolumeFile"),
    SampleFile("CT_mask.nii.gz", "1f206092122a5a59e307e3285b364ba2f82f55e417ff9a9efeed222afa11c6b3",
               f"{CASE} tumour (reference)", "SegmentationFile"),
)


def registerSampleData() -> None:
    """Add the sample to Slicer's Sample Data module (Slicer only)."""
    import os

    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=[f.url for f in FILES],
        fileNames=[f.cacheName for f in FILES],
        nodeNames=[f.nodeName for f in FILES],
        loadFileTypes=[f.loadFileType for f in FILES],
        checksums=[f"SHA256:{f.sha256}" for f in FILES],
        thumbnailFileName=os.path.join(os.path.dirname(os.path.dirname(__file__)), "Resources", "Icons",
                                       "DistillSeg.png"),
    )


def downloadSample():
    """Download (or take from the cache) and load the sample: ``(ctNode, petNode, segmentationNode)``."""
    import SampleData

    registerSampleData()  # idempotent; startupCompleted has not fired when the module was loaded later
    nodes = SampleData.SampleDataLogic().downloadSamples(SAMPLE_NAME)  # in the order of FILES
    if len(nodes) != len(FILES):
        raise RuntimeError(f"{SAMPLE_NAME}: {len(nodes)} of {len(FILES)} files were loaded")
    return tuple(nodes)
