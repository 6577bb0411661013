"""``python tests/_ddp_evaluation.py <ckpt> <results.json> <devices>``: RobustEvaluation under Lightning's
``trainer.test`` on ``devices`` CPU processes (DDP when more than one), for tests/test_attack_ensemble.py.

A script of its own because Lightning's DDP launcher starts the other processes by running the same
command line again."""

from __future__ import annotations

import sys
from pathlib import Path


def main(checkpoint: str, results_file: str, devices: int) -> None:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from robustlip.attacks import PGD, AutoAttack
    from robustlip.callbacks import RobustEvaluation
    from robustlip.metrics import LocalLipschitz
    from robustlip.module import CheckpointedNet
    from robustlip.runs.checkpoints import checkpoint_config, load_checkpoint, net_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    config = checkpoint_config(ckpt)
    eps = config["data"]["eps"]
    evaluation = RobustEvaluation(
        attack=None,
        attacks={"pgd": PGD(eps), "autoattack": AutoAttack(eps, version="custom", attacks=["apgd-ce"])},
        lipschitz=LocalLipschitz(eps, steps=1),
        n_examples=40,
        results_file=Path(results_file),
    )
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         callbacks=[evaluation], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False)
    trainer.test(CheckpointedNet(net_from_checkpoint(ckpt, config)), datamodule=instantiate(config["data"]), verbose=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
