"""One resumable, seeded training loop shared by every method that trains by minibatch SGD.

A method supplies its model, optimiser, LR schedule and a loss function of one minibatch;
this loop owns shuffling, noise RNG, progress bars, per-epoch logging, an optional
exponential moving average (EMA) of the weights, and checkpoints (model + EMA + optimiser +
scheduler + RNG state, written atomically every N epochs), so a job killed by the scheduler
and re-run continues where it stopped and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from anodiff.methods.base import TrainCallbacks
from anodiff.precision import autocast
from anodiff.utils import atomic_torch_save

log = logging.getLogger(__name__)

# loss_fn(batch, generator) -> scalar loss; the generator draws the batch's noise/timesteps.
LossFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class TrainState:
    """Everything needed to continue training exactly where it stopped."""

    epoch: int  # number of completed epochs
    losses: list[float]  # mean training loss of each completed epoch


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loss_fn: LossFn,
    data: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    callbacks: TrainCallbacks,
    grad_clip: float | None = None,
    ema: nn.Module | None = None,
    ema_decay: float = 0.0,
    accumulate: int = 1,
) -> TrainState:
    """Minimise ``loss_fn`` over minibatches of ``data`` (N, ...) for ``epochs`` epochs.

    ``lr_scheduler`` (if any) steps once per optimiser step. ``accumulate``: minibatches per
    optimiser step (gradient accumulation, as PyTorch Lightning's ``accumulate_grad_batches``:
    each minibatch's loss is divided by it, and the optimiser steps after every ``accumulate``
    minibatches and after the last minibatch of an epoch, so no step spans two epochs and a
    checkpoint never holds a partial sum). ``ema`` (if given: a module with the
    same parameters as ``model``, e.g. its initial ``copy.deepcopy``) is updated after every
    optimiser step by :func:`update_ema` with ``ema_decay``; it is saved in the checkpoint and
    restored on resume. ``callbacks.precision`` (bf16, fp16): the forward pass and loss run
    under autocast (anodiff.precision); fp16 scales the loss with a ``GradScaler`` (its state
    is checkpointed too).
    """
    if len(data) == 0:
        raise ValueError("no training samples: check the dataset's train/good folder")
    if ema is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    scaler = torch.amp.GradScaler(device.type, enabled=callbacks.precision == "fp16")
    state = TrainState(epoch=0, losses=[])
    checkpoint = Path(callbacks.checkpoint_path) if callbacks.checkpoint_path else None
    saved = _matching_checkpoint(checkpoint, callbacks.checkpoint_identity, device) if checkpoint else None
    if saved is not None:
        state = _restore(checkpoint, saved, model, optimizer, lr_scheduler, generator, ema)
        if scaler.is_enabled() and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        log.info("resuming from %s after epoch %d", checkpoint, state.epoch)

    progress = tqdm(
        range(state.epoch, epochs),
        initial=state.epoch,
        total=epochs,
        desc="train",
        unit="epoch",
        disable=not callbacks.show_progress,
    )
    model.train()
    for epoch in progress:
        order = torch.randperm(len(data), generator=generator)
        total, count = 0.0, 0
        for index, start in enumerate(range(0, len(data), batch_size)):
            batch = data[order[start : start + batch_size]].to(device)
            with autocast(callbacks.precision, device):
                loss = loss_fn(batch, generator).float()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {epoch + 1}: lower the learning "
                    "rate or check the cached features for NaN"
                )
            if index % accumulate == 0:  # the first minibatch of an accumulation group
                optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
            total += loss.item() * len(batch)
            count += len(batch)
            if (index + 1) % accumulate and start + batch_size < len(data):
                continue  # accumulating: the optimiser steps after the group's last minibatch
            if grad_clip:
                scaler.unscale_(optimizer)  # no-op unless fp16
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)  # optimizer.step(), skipped by fp16 scaling after an overflow
            scaler.update()
            if lr_scheduler is not None:
                lr_scheduler.step()
            if ema is not None:
                update_ema(ema, model, ema_decay)
        state.losses.append(total / count)
        state.epoch = epoch + 1
        progress.set_postfix(loss=f"{state.losses[-1]:.4f}")
        callbacks.log_metrics({"train_loss": state.losses[-1]}, state.epoch)
        if state.epoch in callbacks.snapshot_epochs:  # the scoring weights of this epoch (a paper protocol's candidate)
            callbacks.save_snapshot(state.epoch, {k: v.detach().cpu().clone() for k, v in
                                                  (ema if ema is not None else model).state_dict().items()})
        if checkpoint is not None and (
            state.epoch % callbacks.checkpoint_every == 0 or state.epoch == epochs
        ):
            _save(checkpoint, model, optimizer, lr_scheduler, generator, state, ema, callbacks.checkpoint_identity,
                  scaler)
    model.eval()
    if ema is not None:
        ema.eval()
    return state


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """One EMA step: ``ema_p <- decay * ema_p + (1 - decay) * p`` for every parameter.

    Written as the official InversionAD code does it (``mul_(decay).add_(p, alpha=1 - decay)``,
    no warm-up or bias correction); buffers (e.g. BatchNorm statistics) are copied as they are.
    """
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.mul_(decay).add_(param.detach(), alpha=1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def _save(path, model, optimizer, lr_scheduler, generator, state: TrainState, ema, identity, scaler=None) -> None:
    atomic_torch_save(
        {
            "identity": dict(identity),
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
            "generator": generator.get_state(),
            "epoch": state.epoch,
            "losses": state.losses,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        },
        path,
    )


def _matching_checkpoint(path: Path, identity: dict[str, str], device: torch.device) -> dict | None:
    """The checkpoint at ``path`` if it belongs to this training (``identity``); one that is
    unreadable (a truncated file) or written for another config, data, seed or version is
    moved aside (never silently resumed) and training starts fresh."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        reason = None if saved.get("identity", {}) == dict(identity) else (
            f"it belongs to {saved.get('identity', {})}, this training is {dict(identity)}")
    except Exception as error:  # a damaged file: torch raises several types
        saved, reason = None, f"it cannot be read ({type(error).__name__}: {error})"
    if reason is None:
        return saved
    aside = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    log.warning("checkpoint %s is not resumed: %s; moved aside to %s, training starts fresh", path, reason, aside)
    return None


def _restore(path, saved, model, optimizer, lr_scheduler, generator, ema) -> TrainState:
    model.load_state_dict(saved["model"])
    if ema is not None:
        if saved.get("ema") is None:
            raise ValueError(f"checkpoint {path} holds no EMA weights; delete it to train from scratch")
        ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])
    if lr_scheduler is not None and saved["lr_scheduler"] is not None:
        lr_scheduler.load_state_dict(saved["lr_scheduler"])
    generator.set_state(saved["generator"])
    return TrainState(epoch=saved["epoch"], losses=list(saved["losses"]))
