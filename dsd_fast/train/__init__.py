"""Training (DermoSegDiff): data, losses, the resumable loop.

    data.py     image/mask pairs from folders, held at model size; augmentations
    losses.py   eps-MSE and the published boundary-aware loss
    options.py  TrainOptions (checked when made), the learning-rate schedule
    validation.py  validate: Dice at a validation setting (steps, members, spacing, crop)
    loop.py     Trainer (Adam, EMA, validation, checkpoints)
"""
from .loop import EMA, TrainOptions, Trainer, train, validate

__all__ = ["TrainOptions", "Trainer", "EMA", "train", "validate"]
