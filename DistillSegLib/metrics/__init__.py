"""How good a segmentation is and what it measures.

* :mod:`.segmentation` — Dice, HD95, surface Dice (MONAI), FP/FN volumes, lesion-wise F1.
* :mod:`.lesions` — PET lesion statistics: MTV, SUVmax, SUVmean, SUVpeak, TLG.
* :mod:`.baselines` — the classic 41%-of-SUVmax threshold every result is compared with.
"""
