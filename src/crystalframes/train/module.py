"""The LightningModule: loss on standardised targets, metrics in physical units, optimisers
and learning-rate schedules of both papers."""

from __future__ import annotations

import math

import lightning as L
import torch

from crystalframes.data.normalise import TargetNormaliser
from crystalframes.io.errors import UserError
from crystalframes.train.config import OptimConfig


class NonFiniteLossError(UserError, RuntimeError):
    """Raised when a training loss is NaN/inf; names the structures of the batch."""


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the base lr at optimiser step t for the schedules that LambdaLR expresses."""
    if cfg.scheduler == "polynomial":
        end = cfg.lr_end / cfg.lr
        return lambda t: end + (1 - end) * (1 - min(t, total_steps) / max(total_steps, 1)) ** cfg.power
    if cfg.scheduler == "inverse_sqrt":
        w = cfg.warmup_steps
        return lambda t: math.sqrt(w / (w + t))
    return lambda t: 1.0


class PropertyModule(L.LightningModule):
    """Wraps any crystalframes model (forward(GraphBatch) -> (B, T)) for training."""

    def __init__(self, model: torch.nn.Module, normaliser: TargetNormaliser, optim: OptimConfig, total_steps: int):
        super().__init__()
        self.model = model
        self.normaliser = normaliser
        self.optim_cfg = optim
        self.total_steps = max(int(total_steps), 1)
        self.loss_fn = torch.nn.L1Loss() if optim.loss == "l1" else torch.nn.MSELoss()

    def forward(self, batch):
        return self.model(batch)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)

    def _step(self, batch):
        pred = self.model(batch)
        target = self.normaliser.transform(batch.targets)
        return pred, target

    def training_step(self, batch, batch_idx):
        pred, target = self._step(batch)
        loss = self.loss_fn(pred, target)
        if not torch.isfinite(loss):
            ids = ", ".join(batch.ids[:20]) + (" ..." if len(batch.ids) > 20 else "")
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                f"batch structures: {ids}. Lower the learning rate or check these inputs."
            )
        self.log("train_loss", loss, batch_size=batch.num_graphs, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        pred, target = self._step(batch)
        mae = (self.normaliser.inverse(pred) - batch.targets).abs().mean()
        self.log("val_loss", self.loss_fn(pred, target), batch_size=batch.num_graphs, sync_dist=True)
        self.log("val_mae", mae, batch_size=batch.num_graphs, sync_dist=True, prog_bar=True)

    def predict_step(self, batch, batch_idx):
        return self.normaliser.inverse(self.model(batch))

    def configure_optimizers(self):
        cfg = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # as the ComFormer reference: no weight decay on biases and normalisation layers
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(groups, lr=cfg.lr, betas=tuple(cfg.betas))
        if cfg.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=cfg.lr, total_steps=self.total_steps + 1, pct_start=cfg.pct_start
            )
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, self.total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
