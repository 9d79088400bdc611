"""The fixed, documented split of the 30 ``sts-petct`` cases used by ``distillseg demo``.

* labelled: ``STS_001`` .. ``STS_005`` (the five labelled cases of the reference figures
  in ``../shared/DESIGN.md``; 5 labels is the semi-supervised setting of the MuDuo paper);
* validation: 10 cases drawn from the other 25 by ``numpy.random.default_rng(SPLIT_SEED)
  .permutation`` (the first 10 of the permuted order); reported, never tuned on;
* unlabelled: the remaining 15 (their masks are never read for training).

The seed was fixed before any result was seen. :data:`VALIDATION_CASES` and
:data:`UNLABELLED_CASES` write the outcome down; :func:`sts_split` recomputes it from the
case list and the seed, so a changed data folder is noticed instead of silently reshuffled.
Subsets (``--max-val-cases``, ``--max-unlabelled-cases``) take the *first* cases of the
permuted order, so a smaller run evaluates a prefix of the full validation list;
``--quick`` uses the fixed cases :data:`QUICK_VALIDATION_CASES` and
:data:`QUICK_UNLABELLED_CASES` instead (chosen for speed, see there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DistillSegError

SPLIT_SEED = 2015
N_VALIDATION = 10
LABELLED_CASES = ("STS_001", "STS_002", "STS_003", "STS_004", "STS_005")
# numpy.random.default_rng(2015).permutation of the 25 other case ids (sorted), first 10:
VALIDATION_CASES = (
    "STS_028", "STS_024", "STS_048", "STS_043", "STS_019",
    "STS_050", "STS_044", "STS_018", "STS_029", "STS_036",
)
# ... and the remaining 15, in permuted order:
UNLABELLED_CASES = (
    "STS_012", "STS_026", "STS_033", "STS_034", "STS_025", "STS_042", "STS_015", "STS_023",
    "STS_006", "STS_038", "STS_041", "STS_014", "STS_032", "STS_008", "STS_035",
)


# ``--quick`` (a < 5 min smoke test): LiteMedSAM costs the same per axial slice whatever the
# case, so the quick run uses the validation and unlabelled cases whose tumours span the
# fewest axial slices (counted on the CT masks: STS_019 15, STS_024 23, STS_018 23;
# STS_025 15). The teacher is evaluated on the first of them.
QUICK_VALIDATION_CASES = ("STS_019", "STS_024", "STS_018")
QUICK_UNLABELLED_CASES = ("STS_025",)


@dataclass(frozen=True)
class DemoSplit:
    """Case ids of each role, in the split's fixed order."""

    labelled: tuple[str, ...]
    validation: tuple[str, ...]
    unlabelled: tuple[str, ...]
    seed: int

    def subset(self, max_validation: int | None = None, max_unlabelled: int | None = None) -> "DemoSplit":
        """The same split cut to the first ``max_*`` cases of each permuted list (labelled kept)."""
        return DemoSplit(
            self.labelled,
            self.validation[:max_validation] if max_validation is not None else self.validation,
            self.unlabelled[:max_unlabelled] if max_unlabelled is not None else self.unlabelled,
            self.seed,
        )

    def restrict(self, validation: tuple[str, ...] | None = None, unlabelled: tuple[str, ...] | None = None) -> "DemoSplit":
        """The same split with only the named validation / unlabelled cases (roles are kept)."""
        for name, chosen, allowed in (("validation", validation, self.validation), ("unlabelled", unlabelled, self.unlabelled)):
            wrong = [c for c in chosen or () if c not in allowed]
            if wrong:
                raise DistillSegError(f"{', '.join(wrong)} not among the split's {name} cases")
        return DemoSplit(self.labelled, tuple(validation) if validation else self.validation,
                         tuple(unlabelled) if unlabelled else self.unlabelled, self.seed)

    def scored_on_untouched(self, full: "DemoSplit") -> "DemoSplit":
        """This split scored on the cases of ``full``'s unlabelled pool that it does not use.

        A run with ``--max-unlabelled-cases 6`` leaves 9 pool cases that no training run
        reads and no setting was chosen on: a test set for settings frozen beforehand. They
        take the validation role here (scored, never trained on); the real validation cases
        are left out.

        Raises:
            DistillSegError: the split uses the whole pool, so no case is untouched.
        """
        untouched = tuple(c for c in full.unlabelled if c not in self.unlabelled)
        if not untouched:
            raise DistillSegError("no untouched cases: this split uses every unlabelled case; "
                                  "cut it with --max-unlabelled-cases")
        return DemoSplit(self.labelled, untouched, self.unlabelled, self.seed)

    def holding_out(self, case_id: str) -> "DemoSplit":
        """One fold of cross-validation on the labelled cases: ``case_id`` scored, never trained on.

        Settings may be chosen on the labelled cases only; a fold trains on the other labelled
        cases (and the same unlabelled ones) and scores the held-out case against its label.

        Raises:
            DistillSegError: ``case_id`` is not a labelled case, or no labelled case would remain.
        """
        if case_id not in self.labelled:
            raise DistillSegError(f"{case_id} is not one of the labelled cases {list(self.labelled)}")
        kept = tuple(c for c in self.labelled if c != case_id)
        if not kept:
            raise DistillSegError("holding out the only labelled case leaves nothing to train on")
        return DemoSplit(kept, (case_id,), self.unlabelled, self.seed)

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "rule": "labelled STS_001-005; validation = first 10 of numpy.random.default_rng(seed)"
            ".permutation(other 25 sorted ids); unlabelled = the rest",
            "labelled": list(self.labelled),
            "validation": list(self.validation),
            "unlabelled": list(self.unlabelled),
        }


def sts_split(
    case_ids: list[str] | tuple[str, ...],
    seed: int = SPLIT_SEED,
    n_validation: int = N_VALIDATION,
    labelled: tuple[str, ...] = LABELLED_CASES,
) -> DemoSplit:
    """Split case ids into labelled / validation / unlabelled (see the module docstring).

    Raises:
        DistillSegError: a labelled case is missing, or too few cases remain.
    """
    ids = sorted(set(case_ids))
    missing = [c for c in labelled if c not in ids]
    if missing:
        raise DistillSegError(f"the demo split needs the labelled cases {list(labelled)}; missing {missing}")
    rest = [c for c in ids if c not in labelled]
    if len(rest) < n_validation + 1:
        raise DistillSegError(
            f"the demo split needs at least {n_validation + 1} cases besides {list(labelled)}, found {len(rest)}"
        )
    order = np.random.default_rng(seed).permutation(len(rest))
    permuted = tuple(rest[i] for i in order)
    return DemoSplit(tuple(labelled), permuted[:n_validation], permuted[n_validation:], seed)
