"""Method-specific pieces of the three distillation methods (no trainer, no I/O).

* :mod:`.losses` — losses and schedules shared by the methods (sigmoid ramp-up, soft
  Dice, temperature-scaled KL, co-training consistency).
* :mod:`.muduo` — MuDuo: teacher agreement, selection, random fusion, consistency.
* :mod:`.knowsam` — KnowSAM: second student, learned fusion, learnable prompt, SAM-induced KD.
* :mod:`.tskd` — TS-KD: LoRA fine-tuning of the teacher, distillation on a transfer set.

The strategies in :mod:`DistillSegLib.training.strategies` wire these into the trainer.
"""
