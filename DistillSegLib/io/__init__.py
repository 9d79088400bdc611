"""The data layer: PET/CT in and segmentations out, with no model, student or teacher.

* :mod:`.volume` — :class:`~.volume.Volume` (voxels ``[i, j, k]`` + index-to-RAS affine),
  image files (NIfTI, NRRD, MHA); LPS is converted at the SimpleITK boundary.
* :mod:`.case` — a case: CT (HU) + PET (SUVbw) in one patient frame + optional label.
* :mod:`.dicom_series`, :mod:`.suv` — CT and PET DICOM series; Bq/ml to SUVbw (QIBA).
* :mod:`.dicom_masks` — RTSTRUCT and DICOM SEG to label maps.
* :mod:`.resample` — resampling between grids through the affines.
* :mod:`.dataset` — case folders and the nnU-Net raw layout (the training-set format).
* :mod:`.segmentation_export` — label maps out: NIfTI, .seg.nrrd, DICOM SEG, with
  :mod:`.labels` (segment classes and their terminology).

It imports nothing else of the engine but :mod:`DistillSegLib.errors` and
:mod:`DistillSegLib.atomic` (``Testing/test_layering.py`` keeps it so).
"""
