"""GPU check: does this installation train right on this machine's GPUs? One JSON object.

    python benchmarks/gpu_check.py              # full form on CUDA (< 8 min on one GPU), reduced on CPU
    python benchmarks/gpu_check.py --reduced    # the CPU form anywhere (what CI runs)

Checks (each ``{"passed": bool, ...}``; ``"passed"`` at the top is all of them):

- ``forward_backward``: every spec of ``crystalframes models`` (reduced: the ``max`` and ``none``
  frames of each backbone at ``cpu_small``) runs forward and backward on the device, finite
  outputs and gradients.
- ``invariance_float64``: the float64 contract (:func:`crystalframes.testing.invariance_errors`:
  rotation, translation, permutation, supercell, basis change, batch) on the device for a few
  specs, within ``DEFAULT_TOLERANCES["float64"]`` except each spec's declared dependences.
- ``train_32`` / ``train_bf16_mixed`` / ``train_compiled``: training steps (forward, L1 loss,
  backward, Adam) in float32, under bf16 autocast, and with the model compiled in place
  (``trainer.compile``; inductor on CUDA, aot_eager in the reduced form, which needs no C
  compiler and compiles in seconds; the full form compiles one spec per backbone): finite
  losses and ms per structure; ``train_32`` also counts the host synchronisations and aten
  operators of one step (``host_syncs_per_step``; on CUDA with ``set_sync_debug_mode`` too).
- ``ddp``: with several visible GPUs, DistributedDataParallel over all of them (nccl), a few
  steps, then every parameter and buffer compared across ranks (bit-identical); skipped with
  one GPU; the reduced form runs it over 2 CPU processes (gloo).

Expected figures to compare against: the SPFrame paper reports 37.1 ms per material for
eComFormer + SPFrame and 31.8 ms for plain eComFormer on an RTX 3090 (docs/models.md, its
efficiency comparison); compare ``train_32.ms_per_structure`` of ``ecomformer:spframe_quaternion``
at ``jarvis_formation_energy`` (the full form's training rows use it). CrystalFramer's
efficiency table (Ito et al., ICLR 2025) is not cited in our docs yet: copy its per-epoch times
from the paper when comparing the ``crystalformer:max@reference`` row. On this repository's
2-core CPU the reduced form takes ~1-2 min; its output is in docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

from crystalframes.testing import random_crystals as crystals


def batch_of(model, cs, dtype, device):
    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph

    return collate([build_graph(c, model.graph_settings) for c in cs], dtype=dtype).to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_forward_backward(specs, device) -> dict:
    from crystalframes.models import build_model

    failed = {}
    cs = crystals(4)
    for spec in specs:
        try:
            torch.manual_seed(0)
            model = build_model(spec).to(device).train()
            out = model(batch_of(model, cs, torch.float32, device))
            out.square().sum().backward()
            ok = bool(torch.isfinite(out).all()) and all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
            if not ok:
                failed[spec] = "non-finite output or gradient"
        except Exception as exc:  # a check reports, the script goes on
            failed[spec] = f"{type(exc).__name__}: {exc}"[:300]
    return {"passed": not failed, "specs": len(specs), "failed": failed}


def check_invariance(specs, device) -> dict:
    from crystalframes.models import build_model, declared_dependences
    from crystalframes.testing import DEFAULT_TOLERANCES, invariance_errors, randomise_parameters

    tol = DEFAULT_TOLERANCES["float64"]
    rows, passed = {}, True
    cs = crystals(3, seed=1)
    for spec in specs:
        torch.manual_seed(0)
        model = randomise_parameters(build_model(spec)).double().to(device).eval()
        errors = invariance_errors(model, cs, trials=1, supercells=((2, 1, 1),))
        checked = {k: v for k, v in errors.items() if k != "mirror" and k not in declared_dependences(spec)}
        ok = all(v <= tol for v in checked.values())
        passed &= ok
        rows[spec] = {"passed": ok, "worst": max(checked.values()), "worst_check": max(checked, key=checked.get)}
    return {"passed": passed, "tolerance": tol, "specs": rows}


def check_training(specs, device, mode: str, steps: int, batch_size: int) -> dict:
    """``steps`` timed training steps after 2 untimed ones; mode 32, bf16-mixed or compiled."""
    from crystalframes.models import build_model

    rows, passed = {}, True
    cs = crystals(batch_size, seed=2)
    for spec in specs:
        try:
            torch.manual_seed(0)
            model = build_model(spec).to(device).train()
            if mode == "compiled":
                model.compile(backend="inductor" if device.type == "cuda" else "aot_eager")
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            batch = batch_of(model, cs, torch.float32, device)
            target = torch.zeros(batch_size, 1, device=device)
            losses, t0 = [], None
            for step in range(2 + steps):
                if step == 2:
                    sync(device)
                    t0 = time.perf_counter()
                opt.zero_grad()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16-mixed"):
                    out = model(batch)
                loss = torch.nn.functional.l1_loss(out.float(), target.expand_as(out))
                loss.backward()
                opt.step()
                losses.append(loss.detach())
            sync(device)
            ms = 1000 * (time.perf_counter() - t0) / (steps * batch_size)
            finite = all(math.isfinite(float(x)) for x in losses)
            rows[spec] = {"passed": finite, "ms_per_structure": round(ms, 2), "structures_per_s": round(1000 / ms, 1)}
            if mode == "32":
                rows[spec]["host_syncs_per_step"] = count_syncs(model, opt, batch, target, device)
        except Exception as exc:
            rows[spec] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        passed &= rows[spec]["passed"]
    return {"passed": passed, "batch_size": batch_size, "steps": steps, "specs": rows}


def count_syncs(model, opt, batch, target, device) -> dict:
    """Host synchronisations of one training step: recognised by name in our source
    (:class:`crystalframes.profiling.StepCounter`, any device), and on CUDA also as the driver
    sees them (``torch.cuda.set_sync_debug_mode("warn")`` warns at every synchronising call,
    including torch's own, e.g. linalg error checks)."""
    import warnings

    from crystalframes.profiling import StepCounter

    def step():
        opt.zero_grad()
        torch.nn.functional.l1_loss(model(batch).float(), target.expand(batch.num_graphs, -1)).backward()
        opt.step()

    with StepCounter() as counter:
        step()
    out = {"counted": counter.syncs, "aten_ops": counter.ops}
    if device.type == "cuda":
        sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        out["cuda_sync_warnings"] = sum("synchroniz" in str(w.message) for w in caught)
    return out


def _ddp_worker(rank: int, world: int, spec: str, use_cuda: bool, out_dir: str) -> None:
    import datetime
    import faulthandler

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from crystalframes.models import build_model

    # a rendezvous file of our own, not a TCP port: a port found free can be taken by another
    # process (a parallel test's DDP run) before rank 0 binds it, and rank 1 then waits on the
    # wrong store; the timeout turns any other stall into an error instead of a hang
    faulthandler.dump_traceback_later(120, exit=True)  # a stalled rank prints where, then fails the check
    dist.init_process_group("nccl" if use_cuda else "gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}",
                            rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    try:
        device = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(1)
        torch.manual_seed(0)
        model = build_model(spec).to(device).train()
        ddp = DistributedDataParallel(model, device_ids=[rank] if use_cuda else None)
        opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
        cs = crystals(4 * world, seed=3)
        for step in range(3):
            batch = batch_of(model, cs[rank::world], torch.float32, device)  # each rank its shard
            opt.zero_grad()
            out = ddp(batch)
            torch.nn.functional.l1_loss(out, torch.ones_like(out)).backward()
            opt.step()
        state = torch.cat([t.detach().double().reshape(-1).cpu() for t in model.state_dict().values() if t.is_floating_point()])
        gathered = [torch.zeros_like(state) for _ in range(world)] if rank == 0 else None
        if use_cuda:  # nccl gathers on the device
            everyone = [torch.zeros_like(state, device=device) for _ in range(world)]
            dist.all_gather(everyone, state.to(device))
            gathered = [t.cpu() for t in everyone]
        else:
            dist.gather(state, gathered, dst=0)
        if rank == 0:
            worst = max(float((g - gathered[0]).abs().max()) for g in gathered)
            with open(os.path.join(out_dir, "ddp.json"), "w") as fh:
                json.dump({"max_difference_across_ranks": worst}, fh)
    finally:
        dist.destroy_process_group()
    # about one run in eight, a gloo rank hung in interpreter teardown after this function had
    # returned (all its work done, faulthandler showing no Python frame of ours): leave at once
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def check_ddp(spec: str, world: int, use_cuda: bool) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mp.spawn(_ddp_worker, args=(world, spec, use_cuda, tmp), nprocs=world, join=True)
        with open(os.path.join(tmp, "ddp.json")) as fh:
            result = json.load(fh)
    return {"passed": result["max_difference_across_ranks"] == 0.0, "world_size": world, "backend": "nccl" if use_cuda else "gloo",
            "spec": spec, "seconds": round(time.perf_counter() - t0, 1), **result}


def run(reduced: bool, device: torch.device) -> dict:
    from crystalframes.cli.models import model_rows

    t0 = time.perf_counter()
    if reduced:
        all_specs = [r["spec"] for r in model_rows("cpu_small") if r["spec"].split(":")[1].split("@")[0] in ("none", "max")]
        contract = ["ecomformer:spframe_quaternion@cpu_small", "crystalformer:max@cpu_small"]
        training = ["ecomformer:none@cpu_small", "crystalformer:max@cpu_small"]
        steps, batch_size = 2, 8
    else:
        all_specs = [r["spec"] for r in model_rows()]
        contract = ["ecomformer:spframe_quaternion@cpu_small", "ecomformer:max@cpu_small",
                    "crystalformer:max@cpu_small", "crystalformer:spframe_gram_schmidt@cpu_small"]
        training = ["ecomformer:none@jarvis_formation_energy", "ecomformer:spframe_quaternion@jarvis_formation_energy",
                    "crystalformer:none@reference", "crystalformer:max@reference"]
        steps, batch_size = 10, 64
    checks = {}

    def timed(name, check, *args):  # progress on stderr, so a stalled run shows where it stands
        t = time.perf_counter()
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        checks[name] = check(*args)
        print(f"gpu_check: {name} {'passed' if checks[name]['passed'] else 'FAILED'} in {time.perf_counter() - t:.1f} s",
              file=sys.stderr, flush=True)

    timed("forward_backward", check_forward_backward, all_specs, device)
    timed("invariance_float64", check_invariance, contract, device)
    timed("train_32", check_training, training, device, "32", steps, batch_size)
    timed("train_bf16_mixed", check_training, training, device, "bf16-mixed", steps, batch_size)
    # inductor compiles for minutes per spec: one spec per backbone keeps the check under 8 min
    timed("train_compiled", check_training, training if reduced else training[1::2], device, "compiled", steps, batch_size)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus > 1:
        timed("ddp", check_ddp, training[-1], gpus, True)
    elif reduced:
        timed("ddp", check_ddp, "crystalformer:max@cpu_small", 2, False)
    else:
        checks["ddp"] = {"passed": True, "skipped": "one GPU visible"}
    return {
        "form": "reduced" if reduced else "full",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "checks": checks,
        "passed": all(c["passed"] for c in checks.values()),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reduced", action="store_true", help="the CPU form (the default without CUDA)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--watchdog", type=float, default=None, metavar="SECONDS",
                   help="after this long, print every thread's stack to stderr and exit (a stalled check shows where)")
    a = p.parse_args(argv)
    if a.watchdog:
        import faulthandler

        faulthandler.dump_traceback_later(a.watchdog, exit=True)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    reduced = a.reduced or device.type != "cuda"
    if device.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    report = run(reduced, device)
    print(json.dumps(report, indent=1))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
