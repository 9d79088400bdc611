"""``supervised``: the baseline every distillation strategy is measured against.

Labelled patches only, CE + Dice loss (MONAI ``DiceCELoss``, equal weights as in
nnU-Net, Isensee et al., Nature Methods 2021).
"""

from __future__ import annotations

from .trainer import Strategy


class SupervisedStrategy(Strategy):
    name = "supervised"

    def loss(self, trainer, step):
        batch = trainer.labelled_batch()
        logits = trainer.model(batch["image"].to(trainer.device))
        loss = trainer.supervised_loss(logits, batch["label"].to(trainer.device))
        return loss, {}
