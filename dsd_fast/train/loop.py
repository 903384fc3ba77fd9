"""Training, for every family: its loss (DermoSegDiff: eps-MSE + boundary-aware loss;
MedSegDiff: the package's MSE on its objective; the official MedSegDiff code: MSE + VB +
10 x MSE(cal)), Adam, EMA, validation, resumable.

A run lives in one folder:
    last.pt              everything needed to resume (model, EMA, optimizer, step, RNG),
                         torch.save of tensors/numbers/dicts only: loads with weights_only=True
    best.safetensors     the EMA weights with the best validation Dice so far (own format),
                         at the run's validation setting (validation.py; its "val_setting")
    log.jsonl            one JSON line per log/validation event
Every file is written to a temporary name and renamed, so a run killed at any moment leaves
the previous good checkpoint in place.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..checkpoint import load_model, read_metadata, save_model
from ..channels import to_model_channels
from ..classes import class_metadata
from ..families import find_config
from ..io import torch_save
from ..precision import resolve_precision, with_precision
from ..preprocess import minmax_normalise
from .augment import ROI_HOLD
from .data import PairBatches, load_pairs, match_pairs, read_id_list
# the options and validation stay importable from here, where callers have always found them
from .options import (LR_SCHEDULES, TrainOptions, check_train_device,  # noqa: F401
                      saved_validation, scheduled_lr)
from .sources import DataSource, MixedBatches, load_source
from .validation import validate, validate_classes  # noqa: F401


class EMA:
    """Exponential moving average of the weights with a warm-up (ema_pytorch's schedule):

        decay(k) = min(beta, 1 - (1 + k) ** -power),  k = step - update_after - 1
    Before `update_after` steps the EMA copies the online weights.
    """

    def __init__(self, model: torch.nn.Module, beta: float, update_after: int, power: float):
        self.beta, self.update_after, self.power = beta, update_after, power
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay(self, step: int) -> float:
        k = step - self.update_after - 1
        if k < 0:
            return 0.0
        return min(self.beta, 1 - (1 + k) ** -self.power)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = self.decay(step)
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v, 1 - d)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)


class Trainer:
    def __init__(self, opts: TrainOptions, log=print):
        self.opts, self.log = opts, log
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.out = Path(opts.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.family, self.config = find_config(opts.config)
        self.schedule = self.family.default_schedule(self.config)
        self.channels = self.family.image_channels(self.config)
        self.preprocessing = self.family.preprocessing(self.config)
        size = self.config.image_size
        torch.manual_seed(opts.seed)
        self.device = torch.device(opts.device)
        # built on the CPU (the same initial weights from the same seed on every device)
        self.model = self.family.build_reference(self.config).to(self.device)
        # What the losses call: the model itself, or it under bfloat16 autocast (same
        # parameters; checkpoints always hold self.model's float32 state).
        self.net = with_precision(self.model, resolve_precision(opts.precision, self.device))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=opts.lr, betas=tuple(opts.betas))
        self.ema = EMA(self.model, opts.ema_beta, opts.ema_update_after, opts.ema_power)
        self.ema_model = self.family.build_reference(self.config).to(self.device)
        self.gen = torch.Generator().manual_seed(opts.seed)
        normalise = self.family.preprocessing(self.config).normalise == "minmax"
        # Held at twice the model size so that zooming in shows real detail (ROI crops: more)
        hold = max(2 * size if opts.augmentation == "strong" else size,
                   ROI_HOLD * size if opts.roi_crops > 0 else 0)
        # Validation with zoom crops from the held image: ROI_HOLD x the model size, as the
        # --roi-crops training pairs (validation.py `_zoomed_results`); else model size.
        val_hold = ROI_HOLD * size if opts.val_crop == "zoom" else size
        if opts.sources:
            srcs = [DataSource(**d) for d in opts.sources]
            loaded = [load_source(src, size, hold, val_hold) for src in srcs]
            self.val_sets = {src.name: val for src, (_, val) in zip(srcs, loaded) if val}
            self.batches = MixedBatches([tr for tr, _ in loaded], [s.weight for s in srcs],
                                        size, opts.batch_size, self.gen, opts.augmentation,
                                        normalise=normalise, roi_crops=opts.roi_crops)
        else:
            train_ids = read_id_list(opts.train_ids) if opts.train_ids else None
            classes = opts.classes
            train = load_pairs(match_pairs(opts.image_dir, opts.mask_dir, train_ids, classes),
                               hold)
            self.val_sets = ({"val": load_pairs(match_pairs(opts.image_dir, opts.mask_dir,
                                                            read_id_list(opts.val_ids),
                                                            classes), val_hold)}
                             if opts.val_ids else {})
            if opts.augmentation == "strong" or opts.roi_crops > 0:
                self.batches = MixedBatches([train], [1.0], size, opts.batch_size, self.gen,
                                            opts.augmentation, normalise=normalise,
                                            roi_crops=opts.roi_crops)
            else:
                self.batches = PairBatches(train, opts.batch_size, self.gen,
                                           normalise=normalise)
        self.val_samples = [s for v in self.val_sets.values() for s in v]
        self.step = 0
        # The step the EMA's warm-up counts from: a warm start restarts it, or the EMA of a
        # run fine-tuned on new data (decay ~0.9998 at step 12,000) would hold the old
        # weights for thousands of steps.
        self.ema_origin = 0
        self.best_dice = -1.0
        self.last_path = self.out / "last.pt"
        if self.last_path.exists():
            self._resume()
        elif opts.init_from:
            self._warm_start(Path(opts.init_from))

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.shadow,
                "optimizer": self.opt.state_dict(), "step": self.step,
                "best_dice": self.best_dice, "rng": self.gen.get_state(),
                "ema_origin": self.ema_origin,
                "torch_rng": torch.get_rng_state(),
                "options": json.dumps(self.opts.to_dict()),
                "config": self.config.to_json()}

    def save(self) -> None:
        torch_save(self._state(), self.last_path)

    def _resume(self) -> None:
        try:
            st = torch.load(self.last_path, map_location="cpu", weights_only=True)
            if not isinstance(st, dict) or not {"model", "ema", "optimizer", "step",
                                                "config"} <= set(st):
                raise ValueError("not a training checkpoint of this tool")
        except Exception as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]   # torch's run long
            raise ValueError(f"{self.last_path}: cannot resume from it ({why}); move it away "
                             "to start the run over") from None
        if st["config"] != self.config.to_json():
            raise ValueError(f"{self.last_path} was trained with config {st['config']}, "
                             f"not {self.config.to_json()}; use another --out folder")
        self.model.load_state_dict(st["model"])
        self.ema.shadow = {k: v.to(self.device) for k, v in st["ema"].items()}
        self.opt.load_state_dict(st["optimizer"])
        self.step, self.best_dice = int(st["step"]), float(st["best_dice"])
        self.ema_origin = int(st.get("ema_origin", 0))
        self.gen.set_state(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        self.log(f"resumed from {self.last_path} at step {self.step} "
                 f"(best val Dice {self.best_dice:.4f})")
        saved = saved_validation(json.loads(st.get("options") or "{}"))
        if saved != self.opts.validation and self.best_dice >= 0:
            self._rescore_best(saved)

    def _rescore_best(self, saved: dict) -> None:
        """The run resumes at another validation setting than the one that chose
        best.safetensors (`saved`): its Dice does not compare with the new setting's, so
        best.safetensors is validated again at the new one and that becomes the Dice to
        beat (its metadata rewritten to say so)."""
        best = self.out / "best.safetensors"
        if not best.exists() or not self.val_samples:
            self.best_dice = -1.0
            return
        self.ema_model.load_state_dict(load_model(best).state_dict())
        old = self.best_dice
        self.best_dice = self._score(self.ema_model)
        step = json.loads(read_metadata(best).get("step", "null"))
        self._save_best(self.best_dice, step)
        self._log_event(val_setting_changed={"from": saved, "to": self.opts.validation},
                        best_val_dice_before=old, best_val_dice=self.best_dice)
        self.log(f"validation setting changed from {_setting_text(saved)} to "
                 f"{_setting_text(self.opts.validation)}: best.safetensors (step {step}) "
                 f"scored again, {old:.4f} -> {self.best_dice:.4f}")

    def _warm_start(self, path: Path) -> None:
        src = load_model(path)
        weights = src.state_dict()
        if src.config != self.config:
            try:
                weights = self.family.adapted_state_dict(weights, src.config, self.config)
            except ValueError as e:
                raise ValueError(f"{path}: {e} (--config {self.opts.config})") from None
            self.log(f"{path}: weights carried over from {src.config.to_json()}")
        self.model.load_state_dict(weights)
        self.ema.shadow = {k: v.detach().clone().to(self.device) for k, v in weights.items()}
        meta = read_metadata(path)
        self.step = self.ema_origin = int(json.loads(meta.get("step", "0")))
        self.log(f"warm start from {path} (step {self.step}, its val Dice "
                 f"{meta.get('val_dice', 'unknown')}); fresh optimizer")
        self._log_event(warm_start=str(path), source_step=meta.get("step"),
                        source_val_dice=meta.get("val_dice"))

    def _log_event(self, **event) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, "time": time.time(), **event}) + "\n")

    # ------------------------------------------------------------------ training
    def train_step(self) -> dict:
        o = self.opts
        self.model.train()
        image, x0 = (v.to(self.device) for v in self.batches.next())
        if self.channels != image.shape[1]:      # RGB-held data for a grayscale model: luma,
            image = to_model_channels(image, self.channels)     # then normalised again as
            if self.preprocessing.normalise == "minmax":         # inference does (luma first)
                image = minmax_normalise(image)
        loss, parts = self.family.training_loss(self.net, self.config, image, x0,
                                                self.schedule, self.gen, o)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        lr = scheduled_lr(o.lr, o.lr_schedule, self.step, self.ema_origin, o.total_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.step += 1
        self.ema.update(self.model, self.step - self.ema_origin)
        return parts

    def validate_ema(self) -> float:
        """The selection score: the mean over sources of each source's val Dice (one source:
        its Dice). Per-source figures go to log.jsonl."""
        self.ema.copy_to(self.ema_model)
        return self._score(self.ema_model)

    def _score(self, model) -> float:
        """`validate_ema`'s score of `model` at the run's validation setting."""
        o = self.opts
        per_class = {name: validate_classes(model, val, o.val_steps, o.val_ensemble,
                                            seed=o.seed, schedule=self.schedule,
                                            classes=o.classes, nested=o.classes_nested,
                                            spacing=o.val_spacing, crop=o.val_crop)
                     for name, val in self.val_sets.items()}
        # a source's score: the mean over its classes (one class: its Dice, as before)
        per_source = {name: sum(d.values()) / len(d) for name, d in per_class.items()}
        if len(per_source) > 1:
            self._log_event(val_dice_per_source=per_source)
        if self.opts.classes:
            self._log_event(val_dice_per_class=per_class)
        return sum(per_source.values()) / len(per_source)

    def run(self, progress: bool = True) -> float:
        o = self.opts
        # Denormal floats (softmax/SiLU tails, small gradients) slow x86 CPUs ~25x: seen
        # here as a run falling from 1 s to 25 s per step. Flushing them changes values
        # below 1.2e-38 only.
        torch.set_flush_denormal(True)
        from tqdm.auto import tqdm
        bar = tqdm(total=o.total_steps, initial=self.step, disable=not progress,
                   desc="train", unit="step", mininterval=5)
        running = None
        while self.step < o.total_steps:
            parts = self.train_step()
            loss = parts["loss"] if "loss" in parts else parts["l2"]
            running = loss if running is None else 0.98 * running + 0.02 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)
            if self.step % o.log_every == 0:
                self._log_event(smoothed_loss=running, **parts)
            if self.val_samples and self.step % o.val_every == 0:
                self._validate_and_keep_best()
            if self.step % o.checkpoint_every == 0:
                self.save()
        bar.close()
        self.save()
        if self.val_samples and (self.step % o.val_every) != 0:
            self._validate_and_keep_best()
        if not self.val_samples:      # nothing to select on: export the final EMA weights
            self.ema.copy_to(self.ema_model)
            save_model(self.ema_model, self.out / "best.safetensors", self.schedule,
                       extra_metadata=self._class_metadata())
        return self.best_dice

    def _class_metadata(self) -> dict:
        """The model file's "classes" / "classes_nested" (none for one unnamed class)."""
        if not self.opts.classes:
            return {}
        return class_metadata(tuple(self.opts.classes), self.opts.classes_nested)

    def _validate_and_keep_best(self) -> None:
        t0 = time.time()
        dice = self.validate_ema()
        self._log_event(val_dice=dice, val_seconds=time.time() - t0)
        self.log(f"step {self.step}: val Dice (EMA, {_setting_text(self.opts.validation)}) "
                 f"= {dice:.4f}")
        if dice > self.best_dice:
            self.best_dice = dice
            self._save_best(dice, self.step)
        self.save()

    def _save_best(self, dice: float, step) -> None:
        """self.ema_model as best.safetensors, with its Dice, step and the validation
        setting that measured it ("val_setting": steps, ensemble, spacing, crop)."""
        o = self.opts
        setting = {"steps": o.val_steps, "ensemble": o.val_ensemble,
                   "spacing": o.val_spacing, "crop": o.val_crop}
        save_model(self.ema_model, self.out / "best.safetensors", self.schedule,
                   extra_metadata={"val_dice": dice, "step": step, "val_setting": setting,
                                   **self._class_metadata()})


def _setting_text(v: dict) -> str:
    """'5 DDIM steps (trailing) x 25 members, crop zoom' of a validation setting."""
    return (f"{v['val_steps']} DDIM steps ({v['val_spacing']}) x {v['val_ensemble']} "
            f"members, crop {v['val_crop']}")


def run_validation(out_dir) -> dict | None:
    """The validation setting saved in OUT/last.pt (`saved_validation`: the old default for
    a run saved before it could be chosen), or None where there is no run to resume or it
    cannot be read (the Trainer then says why)."""
    path = Path(out_dir) / "last.pt"
    if not path.is_file():
        return None
    try:
        st = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return saved_validation(json.loads(st["options"]))
    except Exception:                  # unreadable: the Trainer's resume refuses it clearly
        return None


def train(opts: TrainOptions, progress: bool = True) -> float:
    return Trainer(opts).run(progress)
