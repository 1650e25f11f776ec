"""Fine-tuning: a run that starts from a trained model's weights (``train --init MODEL``).

The run's model is the init model's (spec and options come from its file; setting another
``model.spec`` is an error). For another target (``data.target`` differs from the one the init
model predicts) the last layer of the output head starts afresh, unless ``model.keep_head``;
``model.freeze`` keeps named parts fixed (parameter name prefixes such as ``atom_embedding`` or
``layers.0``). The target normaliser comes from the new training data, as in any run.
"""

from __future__ import annotations

from crystalframes.io.errors import UserError


def _init_model(cfg):
    """The init model; of an ensemble (a pretrained model), member ``model.init_member``."""
    from crystalframes.api import load_model

    init = load_model(cfg.model.init)
    members = getattr(init, "members", None)
    if members is None:
        return init
    if cfg.model.init_member >= len(members):
        raise UserError(f"model.init_member {cfg.model.init_member}: {cfg.model.init} has {len(members)} members (0..{len(members) - 1})")
    return members[cfg.model.init_member]


def init_identity(cfg) -> dict:
    """What a fine-tuning run started from: ``model.init`` as given, the ensemble member, and the
    sha256 of that model file (a pretrained name keeps its name when its weights are retrained;
    the hash tells the versions apart)."""
    from crystalframes.train.card import file_sha256

    init = _init_model(cfg)
    digest = file_sha256(init.path) if init.path else None
    return {"source": str(cfg.model.init), "member": cfg.model.init_member, "sha256": digest}


def config_with_init(cfg, explicit: set[str]):
    """``cfg`` with the init model's spec and options (what the run builds)."""
    from crystalframes.models.specs import parse_spec

    init = _init_model(cfg)
    options = {k: v for k, v in init.options.items() if k != "num_targets"}
    if "model.spec" in explicit and parse_spec(cfg.model.spec) != parse_spec(init.spec):
        raise UserError(f"model.init {cfg.model.init} is a {init.spec} model; model.spec {cfg.model.spec} cannot start from it "
                        "(leave model.spec unset: the run takes the init model's)")
    if "model.options" in explicit and cfg.model.options and cfg.model.options != options:
        raise UserError(f"model.init {cfg.model.init} was built with options {options}; model.options {cfg.model.options} differ")
    model = cfg.model.model_copy(update={"spec": init.spec, "options": options})
    return cfg.model_copy(update={"model": model})


def initialise_from(model, cfg) -> str:
    """Load the init model's weights into ``model``; reset the head's last layer for another
    target (unless keep_head); freeze ``model.freeze``. Returns a one-line summary."""

    init = _init_model(cfg)
    # a tensor model (TensorModel) gives its backbone's weights: the run builds its own read-out
    # for its target's rank after the data is read (crystalframes.train.run.tensor_model)
    tensor = init.tensor_rank is not None
    state = (init.model.backbone if tensor else init.model).state_dict()
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        detail = "; ".join(filter(None, [
            f"missing {', '.join(missing[:5])}" if missing else "",
            f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
            f"shapes differ: {', '.join(mismatched[:5])}" if mismatched else ""]))
        raise UserError(f"model.init {cfg.model.init}: its weights do not fit {cfg.model.spec} ({detail})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    said = [f"weights from {init.path} ({init.spec}, target {init.targets[0]})" + (", its backbone only (a fresh tensor read-out)" if tensor else "")]
    if cfg.data.target != init.targets[0] and not cfg.model.keep_head:
        model.output_layer.reset_parameters()
        said.append(f"fresh output layer for {cfg.data.target}")
    names = [n for n, _ in model.named_parameters()]
    for prefix in cfg.model.freeze:
        chosen = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not chosen:
            tops = sorted({n.split(".")[0] for n in names})
            raise UserError(f"model.freeze: {prefix!r} names no parameter of {cfg.model.spec}; its parts are {', '.join(tops)} "
                            "(give a prefix such as layers.0)")
        for name, p in model.named_parameters():
            if name in chosen:
                p.requires_grad_(False)
        said.append(f"froze {prefix} ({len(chosen)} tensors)")
    return "; ".join(said)
