"""Every training process knows its global rank from its launcher's environment (torchrun,
SLURM's srun, Lightning's own multi-node launcher), as Lightning's Trainer will: only global rank 0
guards, locks and writes the run folder. Environments are set by hand; nothing is launched."""

import pytest

# what any launcher could have left in the test's own environment
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
                      "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_PROCID", "SLURM_LOCALID",
                      "SLURM_NODEID", "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_NODELIST", "LSB_JOBID", "LSB_DJOB_RANKFILE",
                      "JSM_NAMESPACE_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def torchrun(rank):  # 2 nodes x 2 processes
    return {"TORCHELASTIC_RUN_ID": "job", "RANK": str(rank), "LOCAL_RANK": str(rank % 2), "GROUP_RANK": str(rank // 2),
            "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def slurm(rank):  # srun --nodes 2 --ntasks-per-node 2: SLURM sets neither RANK nor LOCAL_RANK
    return {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % 2),
            "SLURM_NODEID": str(rank // 2), "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "1234", "SLURM_NODELIST": "127.0.0.1"}


def lightning_launcher(rank):  # `--set trainer.num_nodes=2 trainer.devices=2`, NODE_RANK set per node
    env = {"NODE_RANK": str(rank // 2), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    if rank % 2:  # the process Lightning starts; the one the user started has no LOCAL_RANK
        env.update(LOCAL_RANK="1", WORLD_SIZE="4")
    return env


@pytest.fixture
def launched(monkeypatch):
    # A Trainer sets the process-wide rank of Lightning's rank_zero_only (which every logger
    # checks); restore it, or later trainings in this process log nothing.
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", getattr(rank_zero_only, "rank", 0))

    def set_env(env):
        for name in LAUNCHER_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return set_env


@pytest.mark.parametrize("launcher", [torchrun, slurm, lightning_launcher])
@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_only_global_rank_zero_writes_the_run_folder(launched, launcher, rank):
    from crystalframes.train.folder import is_rank_zero

    launched(launcher(rank))
    assert is_rank_zero() == (rank == 0)


@pytest.mark.parametrize("launcher", [torchrun, slurm, lightning_launcher])
@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_global_rank_is_the_one_lightning_gives_the_process(launched, launcher, rank):
    import lightning as L

    from crystalframes.train.folder import global_rank

    launched(launcher(rank))
    trainer = L.Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    assert global_rank(devices_per_node=2) == trainer.global_rank == rank


def test_slurm_task_count_without_tasks_per_node_is_one_clean_error(launched):
    from crystalframes.io.errors import UserError
    from crystalframes.train.folder import is_rank_zero

    env = slurm(1)
    del env["SLURM_NTASKS_PER_NODE"]
    launched(env)
    with pytest.raises(UserError, match="ntasks-per-node"):
        is_rank_zero()
