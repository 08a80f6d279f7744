"""SLURM configs, as far as a machine without SLURM allows: the submitit launcher configs
compose, the sbatch text submitit would submit has the right resources and ``srun``, the
SLURM trainer config builds Lightning's SLURM environment, and scripts/slurm/train.sbatch is
valid bash. (The requeue itself: tests/test_ops_resume.py.)"""

from __future__ import annotations

import subprocess

import pytest

from conftest import CONF, REPO

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
submitit = pytest.importorskip("submitit")


def _hydra_cfg(overrides: list[str]):
    import medrestore.cli.train  # noqa: F401
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return cfg


def _sbatch_text(launcher_cfg, tmp_path) -> str:
    """What the submitit launcher would submit, rendered without submitting (the launcher's
    own parameter mapping, then ``SlurmExecutor._make_submission_file_text``)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import _make_sbatch_string

    params = OmegaConf.to_container(launcher_cfg, resolve=True)
    for key in ("_target_", "max_num_timeout", "submitit_folder"):  # executor's, not sbatch's
        params.pop(key)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    # AutoExecutor's renaming of the generic names (submitit.auto.auto._convert_deprecated...)
    generic = {"timeout_min": "time", "tasks_per_node": "ntasks_per_node", "name": "job_name",
               "nodes": "nodes", "gpus_per_node": "gpus_per_node",
               "cpus_per_task": "cpus_per_task", "stderr_to_stdout": "stderr_to_stdout"}
    sbatch = {(generic.get(k) if k in base else k): v for k, v in params.items()
              if v is not None and (k not in base or k in generic)}
    if params.get("mem_gb"):
        sbatch["mem"] = f"{params['mem_gb']}GB"
    return _make_sbatch_string(command="python -u -m submitit.core._submit x", folder=tmp_path,
                               **sbatch)


@pytest.mark.parametrize("launcher,nodes", [("slurm", 1), ("slurm_multinode", 2)])
def test_launcher_configs_compose_and_render(launcher, nodes, tmp_path):
    from omegaconf import OmegaConf

    cfg = _hydra_cfg([f"hydra/launcher={launcher}", "trainer=slurm",
                      f"trainer.num_nodes={nodes}", "run_name=exp1", "auto_resume=true"])
    lc = cfg.hydra.launcher
    assert lc._target_.endswith("SlurmLauncher")
    assert (lc.nodes, lc.gpus_per_node, lc.tasks_per_node) == (nodes, 4, 4)
    assert lc.max_num_timeout > 0 and lc.signal_delay_s > 0
    assert OmegaConf.select(cfg, "hydra.sweep.dir").endswith("train/multiruns/exp1")
    assert cfg.trainer.num_nodes == nodes and cfg.trainer.strategy == "ddp"
    text = _sbatch_text(lc, tmp_path)
    assert f"#SBATCH --nodes={nodes}\n" in text
    assert "#SBATCH --ntasks-per-node=4\n" in text
    assert "#SBATCH --gpus-per-node=4\n" in text
    assert "#SBATCH --signal=USR2@120\n" in text
    assert "\nsrun " in text and "--unbuffered" in text
    assert "--partition" not in text                # none in local/: the cluster's default


def test_partition_comes_from_local(tmp_path):
    cfg = _hydra_cfg(["hydra/launcher=slurm", "+local={slurm: {partition: gpu_a100}}"])
    assert cfg.hydra.launcher.partition == "gpu_a100"
    assert "#SBATCH --partition=gpu_a100\n" in _sbatch_text(cfg.hydra.launcher, tmp_path)


def test_slurm_trainer_builds_lightnings_slurm_environment():
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    cfg = _hydra_cfg(["trainer=slurm"])
    (env,) = [instantiate(p) for p in cfg.trainer.plugins]
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue
    assert env.requeue_signal.name == "SIGUSR1"


def test_sbatch_script_is_valid_and_consistent():
    script = REPO / "scripts" / "slurm" / "train.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --signal=SIGUSR1@90", "#SBATCH --requeue"):
        assert line in text
    assert "srun medrestore-train trainer=slurm" in text
    assert 'run_name="$SLURM_JOB_ID" auto_resume=true' in text
