"""Run by tests/test_ddp.py as a 2-process gloo job: train a tiny model for one epoch on the
MultiTaskDataModule and dump, per rank, the tasks of every batch it trained on and the draw ids
its batch sampler handed out. Usage: python tests/ddp_probe.py OUT_DIR SHARD"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from medrestore.datasets.datamodule import MultiTaskDataModule


class Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[list[str]] = []

    def training_step(self, batch, _):
        self.batches.append(list(batch["task"]))
        return (self.w * batch["lq"].mean()).sum() + self.w.square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out: Path, shard: str) -> None:
    dm = MultiTaskDataModule([shard], patch_size=16, batch_size=12, samples_per_epoch=48, seed=7)
    model = Probe()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2,
                        use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    sampler = trainer.train_dataloader.batch_sampler
    draws = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        draws[epoch] = [d for batch in sampler for _, d in batch]
    rank = trainer.global_rank
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": trainer.world_size, "batches": model.batches,
         "draws": draws, "per_device": dm.batch_size_per_device}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
