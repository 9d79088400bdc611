"""Unlabelled cases carry no label into training: only the pseudo-label audit holds a copy.

Real sts-petct case (STS_001, which has a label) prepared as an unlabelled case, as
``distillseg train --audit-pseudo-labels`` and ``benchmarks/distillation.py`` prepare them.
"""

from __future__ import annotations

import numpy as np
import pytest

from DistillSegLib.errors import DistillSegError
from DistillSegLib.student.config import StudentConfig
from DistillSegLib.student.preprocess import prepare_case

CONFIG = StudentConfig(patch_size=(16, 16, 8), channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


def test_an_unlabelled_case_keeps_its_label_only_in_the_audit_copy(sts_001):
    from DistillSegLib.distill.pseudo_labels import native_image, teacher_label

    assert sts_001.label is not None
    unlabelled = prepare_case(sts_001, CONFIG, with_label=False, audit=True)
    assert unlabelled.label is None
    assert unlabelled.audit_label is not None and unlabelled.audit_label.any()
    # the source the teachers read (native CT and PET) carries no label ...
    assert unlabelled.source is not None and unlabelled.source.label is None
    assert unlabelled.source.label_on_ct is None
    assert native_image(unlabelled, "CT").shape == sts_001.ct.shape  # ... but still its images
    # ... and the caller's case is left as it was
    assert sts_001.label is not None
    # the audit's copy is its own: writing the case's other arrays cannot reach it
    labelled = prepare_case(sts_001, CONFIG)
    np.testing.assert_array_equal(unlabelled.audit_label, labelled.label)
    assert not np.shares_memory(unlabelled.audit_label, labelled.label)
    # a teacher target is refused for the unlabelled case, given for the labelled one
    with pytest.raises(DistillSegError, match="no training label"):
        teacher_label(unlabelled, native_image(unlabelled, "CT"))
    assert teacher_label(labelled, native_image(labelled, "CT")).sum() == (sts_001.label.array > 0).sum()


def test_without_audit_an_unlabelled_case_holds_no_label_at_all(sts_001):
    unlabelled = prepare_case(sts_001, CONFIG, with_label=False)
    assert unlabelled.label is None and unlabelled.audit_label is None and unlabelled.source.label is None
