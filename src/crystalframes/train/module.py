"""The LightningModule: loss on standardised targets, metrics in physical units, optimisers
and learning-rate schedules of both papers."""

from __future__ import annotations

import math
from contextlib import nullcontext

import lightning as L
import numpy as np
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


def frame_usage(frames: list, batch, max_pairs: int = 20000) -> dict[str, float]:
    """How differently neighbouring atoms are oriented by the model's frames, from the frames
    built in one forward pass (per layer; per-head frames count head by head): the median and
    90th percentile over neighbour pairs (i != j; the graph's edges, or, for a model without a
    neighbour graph such as Crystalformer, whose attention reaches every atom, all pairs of
    a crystal) of the rotation angle between their frames, arccos((tr(F_i F_j^T) - 1) / 2) in
    degrees, averaged over the layers. Near 0: neighbours have about the same frame (the model
    is barely using local frames)."""
    edges = getattr(batch, "edge_index", None)
    if edges is not None and edges.numel():
        i, j = edges[0], edges[1]
        keep = i != j
        i, j = i[keep], j[keep]
    else:
        same = batch.batch.unsqueeze(0) == batch.batch.unsqueeze(1)
        i, j = torch.nonzero(torch.triu(same, diagonal=1), as_tuple=True)
    if len(i) > max_pairs:  # a fixed, evenly spaced subset
        keep = torch.linspace(0, len(i) - 1, max_pairs, device=i.device).long()
        i, j = i[keep], j[keep]
    out = {}
    if len(i):
        medians, p90s = [], []
        for f in frames:
            f = f.float().reshape(f.shape[0], -1, 3, 3)  # (N, H, 3, 3)
            trace = (f[i] * f[j]).sum(dim=(-1, -2))  # tr(F_i F_j^T) per head
            angle = torch.rad2deg(torch.arccos(((trace - 1) / 2).clamp(-1, 1))).reshape(-1)
            medians.append(angle.median().item())
            p90s.append(torch.quantile(angle, 0.9).item())
        out["frame_angle_median"] = sum(medians) / len(medians)
        out["frame_angle_p90"] = sum(p90s) / len(p90s)
    return out


class PropertyModule(L.LightningModule):
    """Wraps any crystalframes model (forward(GraphBatch) -> (B, T)) for training."""

    def __init__(self, model: torch.nn.Module, normaliser: TargetNormaliser, optim: OptimConfig, total_steps: int):
        super().__init__()
        self.model = model
        self.normaliser = normaliser
        self.optim_cfg = optim
        self.total_steps = max(int(total_steps), 1)
        self.loss_fn = torch.nn.L1Loss() if optim.loss == "l1" else torch.nn.MSELoss()
        self._recent: list = []  # (epoch, step, structure ids) of the training steps since the last check
        self._flag: torch.Tensor | None = None  # on the device: first non-finite position in _recent or -1, its loss, last loss
        self.last_train_loss: float | None = None  # the training loss at the last check, for progress displays

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
        self._watch_loss(loss.detach(), batch)
        # Not in Lightning's progress-bar metrics: Lightning converts those to numbers after every
        # batch (a host read of the loss each step); logged values are read only when they are
        # written, every log_every_n_steps. The bars show the loss of the last check instead.
        self.log("train_loss", loss, batch_size=batch.num_graphs, on_step=True, on_epoch=True)
        if len(self._recent) >= self.trainer.log_every_n_steps:
            self.check_finite_loss()
        return loss

    # A non-finite training loss stops the run, naming the step and its structures, but testing
    # `isfinite(loss)` on the host would make every GPU step wait for the device. The device keeps
    # the position of the first non-finite loss among the steps since the last check, the host the
    # (epoch, step, structure ids) of those steps; one read every log_every_n_steps, at the epoch
    # end, before validation and before any checkpoint is written (so no checkpoint ever holds the
    # weights that a NaN step produced: the check raises before Lightning writes the file).
    def _watch_loss(self, loss: torch.Tensor, batch) -> None:
        if self._flag is None or self._flag.device != loss.device:
            # float32 holds the positions exactly (far beyond any logging interval); float64 losses keep theirs
            dtype = torch.float64 if loss.dtype == torch.float64 else torch.float32
            self._flag = torch.tensor([-1.0, 0.0, 0.0], dtype=dtype, device=loss.device)
            self._recent = []
        flag, value = self._flag, loss.to(self._flag.dtype)
        new = ~torch.isfinite(loss) & (flag[0] < 0)
        flag[0] = torch.where(new, float(len(self._recent)), flag[0])
        flag[1] = torch.where(new, value, flag[1])
        flag[2] = value
        self._recent.append((self.current_epoch, self.global_step, list(batch.ids)))

    def check_finite_loss(self) -> None:
        """Raise :class:`NonFiniteLossError` for the first non-finite training loss since the last
        check (one host read; nothing to do when no step ran since)."""
        if not self._recent:
            return
        first, value, last = self._flag.tolist()
        recent, self._recent = self._recent, []
        # every rank checks at the same steps; in a distributed run all of them stop together
        # (a rank that went on alone would wait forever in the next collective)
        anywhere = self.trainer.strategy.reduce_boolean_decision(first >= 0, all=False) if self._trainer is not None else first >= 0
        if anywhere and first < 0:
            self._flag = None
            raise NonFiniteLossError(
                f"training loss became non-finite on another process by epoch {self.current_epoch}, "
                f"step {self.global_step} (its error names the structures). Lower the learning rate or check the inputs."
            )
        if first >= 0:
            self._flag = None
            epoch, step, ids = recent[int(first)]
            shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
            raise NonFiniteLossError(
                f"training loss is {value} at epoch {epoch}, step {step}; "
                f"batch structures: {shown}. Lower the learning rate or check these inputs."
            )
        self.last_train_loss = last

    def on_train_epoch_end(self):
        self.check_finite_loss()

    def on_train_end(self):
        self.check_finite_loss()

    def on_validation_start(self):
        self.check_finite_loss()

    def on_save_checkpoint(self, checkpoint):
        self.check_finite_loss()

    def validation_step(self, batch, batch_idx):
        # the frames of the first batch, for the frame-usage diagnostics below
        with self.model.record_frames(batch.batch.shape[0]) if batch_idx == 0 else nullcontext() as recorded:
            pred, target = self._step(batch)
        # Sums over the structures, reduced over the ranks at the epoch end: means of per-rank
        # means would weight the ranks' unequal counts wrongly, and the padding repeats that give
        # every rank as many batches must not count twice.
        keep = self._counted(batch_idx, batch.num_graphs)
        diff = (pred - target)[:keep].double()
        loss = diff.abs() if self.optim_cfg.loss == "l1" else diff.square()
        if pred.dim() > 2:
            # a tensor target: val_mae is the mean Frobenius error in physical units (the tensor
            # papers' headline error), the loss the mean over all Cartesian components
            from crystalframes.train.tensor_metrics import frobenius_errors

            error = frobenius_errors(self.normaliser.inverse(pred)[:keep].double(), batch.targets[:keep].double()).unsqueeze(-1)
            loss = loss.flatten(1)
        else:
            error = (self.normaliser.inverse(pred)[:keep].double() - batch.targets[:keep].double()).abs()
        counts = error.new_tensor(float(keep))
        self._val_sums += torch.stack([error.mean(-1).sum(), loss.mean(-1).sum(), counts]).to(self._val_sums)
        if recorded is not None and recorded.calls:
            usage = frame_usage(recorded.layers(), batch)
            # share of atoms whose learned Gram-Schmidt vectors were degenerate (fallback frame)
            fallback = [m.fallback_fraction for m in self.model.modules() if getattr(m, "fallback_fraction", None) is not None]
            if fallback:
                usage["frame_fallback"] = float(torch.stack(fallback).float().mean())
            for name, value in usage.items():
                self.log(name, value, batch_size=batch.num_graphs)

    def on_validation_epoch_start(self):
        # |error| in physical units, loss and structures of this rank's validation so far (float64
        # where the device has it: the sums of a large validation set keep their digits)
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self._val_sums = torch.zeros(3, dtype=dtype, device=self.device)

    def on_validation_epoch_end(self):
        total = self.trainer.strategy.reduce(self._val_sums.clone(), reduce_op="sum")
        count = total[2].clamp_min(1)
        # the same on every rank already: Lightning's sync by max keeps it exact (a mean over the
        # ranks could round it) and spares its warning about unsynced epoch metrics
        self.log("val_loss", total[1] / count, sync_dist=True, reduce_fx="max")
        self.log("val_mae", total[0] / count, sync_dist=True, reduce_fx="max", prog_bar=True)

    def _counted(self, batch_idx: int, size: int) -> int:
        """How many leading structures of validation batch ``batch_idx`` count (not padding)."""
        loader = self.trainer.val_dataloaders
        sampler = getattr(loader, "sampler", None)
        if not hasattr(sampler, "counted"):
            return size
        return min(size, max(0, sampler.counted() - batch_idx * loader.batch_size))

    @torch.no_grad()
    def predict_graphs(self, graphs: list, crystals: list, batch_size: int) -> np.ndarray:
        """Predictions (n, n_targets), or (n, 3, ..., 3) for a tensor model, in physical units (float64) for the prepared ``graphs`` of
        ``crystals``, in evaluation mode on the module's device: the end of a training, without
        building any graph again. A non-finite output is an error naming its structure, as in
        :meth:`crystalframes.api.Predictor.predict_crystals`."""
        from crystalframes.data.batch import collate
        from crystalframes.io.errors import InputError

        self.eval()
        dtype = next(self.model.parameters()).dtype
        out = []
        for start in range(0, len(graphs), batch_size):
            batch = collate(graphs[start : start + batch_size], dtype=dtype).to(self.device)
            out.append(self.normaliser.inverse(self.model(batch)).cpu().numpy().astype(np.float64))
        pred = np.concatenate(out) if out else np.zeros((0, np.atleast_1d(self.normaliser.mean).shape[0]))
        bad = np.flatnonzero(~np.isfinite(pred).reshape(len(pred), -1).all(axis=1))
        if len(bad):
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise InputError(crystals[bad[0]].where, "the model's output is not finite (NaN or infinity)" + more)
        return pred

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
