"""Stochastic weight averaging as the Crystalformer / CrystalFramer reference code does it.

From the first step of epoch ``start_epoch`` on, every optimiser step adds the trainable
weights to a running mean; the learning rate keeps following its own (decayed) schedule, never
raised to a separate SWA rate; frozen parameters and counters (Crystalformer's width statistics
``rho_stats``) are not averaged. At the end of training the mean replaces the weights, BatchNorm
statistics are recomputed for it with one pass over the training data (eComFormer), and the run
reports validation and test errors of the averaged model. Lightning's own
``StochasticWeightAveraging`` raises the rate to ``swa_lrs`` and averages once per epoch, over
every parameter: not what the papers trained with.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback


class WeightAverage(Callback):
    def __init__(self, start_epoch: int):
        self.start_epoch = int(start_epoch)
        self.average: dict[str, torch.Tensor] = {}
        self.count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch < self.start_epoch:
            return
        with torch.no_grad():
            for name, p in pl_module.model.named_parameters():
                if not p.requires_grad:
                    continue
                if self.count == 0 or name not in self.average:
                    self.average[name] = p.detach().clone()
                else:  # running mean over steps
                    self.average[name].add_(p.detach() - self.average[name], alpha=1.0 / (self.count + 1))
        self.count += 1

    def on_train_end(self, trainer, pl_module):
        if self.count == 0:
            return
        model = pl_module.model
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.average:
                    p.copy_(self.average[name].to(p))
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            from torch.optim.swa_utils import update_bn

            update_bn(trainer.train_dataloader, model, device=pl_module.device)

    def state_dict(self):
        return {"start_epoch": self.start_epoch, "count": self.count, "average": dict(self.average)}

    def load_state_dict(self, state_dict):
        self.start_epoch = int(state_dict["start_epoch"])
        self.count = int(state_dict["count"])
        self.average = dict(state_dict["average"])
