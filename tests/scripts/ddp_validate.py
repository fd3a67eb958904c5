"""Validate one fixed network on fixed data with N CPU processes (gloo); print val sigma as JSON."""
import json
import sys

import lightning as L
import torch

from mflow.data.datamodule import CYDataModule
from mflow.flows.network import NetworkFlow

class CountPoints(L.Callback):
    """Counts the validation points each rank sees (summed over ranks at the end)."""

    def __init__(self):
        self.count = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.count += len(batch["z"])


if __name__ == "__main__":
    devices, cache, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    dm = CYDataModule(n_points=1000, batch_size=64, cache_dir=cache, seed=3)
    model = NetworkFlow(dm.surface, width=16, depth=2, out_scale=0.5, init_seed=7)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        inference_mode=False, callbacks=[counter := CountPoints()],
    )
    (res,) = trainer.validate(model, datamodule=dm, verbose=False)
    res["points_seen"] = trainer.strategy.reduce(torch.tensor(float(counter.count)), reduce_op="sum")
    res["val_points"] = len(dm.val)
    if trainer.is_global_zero:
        with open(out, "w") as f:
            json.dump({k: float(v) for k, v in res.items()}, f)
    if torch.distributed.is_initialized():  # a process group left to interpreter exit can abort in gloo's threads
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
