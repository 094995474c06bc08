"""One process of the two-launcher torchrun test (test_train_multinode.py).

``multinode_worker.py CONFIG OUT_DIR PARAMS_DIR NAN_RANK``: trains as ``rgbt-train --config CONFIG
--out OUT_DIR`` does (the same ``Trainer``), with the first loss of rank ``NAN_RANK`` made NaN (-1:
none), then writes this rank's trainable parameters, skipped-step count and out dir to
``PARAMS_DIR/rank<RANK>.pt``.
"""
from __future__ import annotations

import math
import os
import sys

import torch

from training.config import load_config
from training.engine import Trainer


def main(argv: list[str]) -> int:
    config, out_dir, params_dir, nan_rank = argv
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    trainer = Trainer(load_config(config, [f"out_dir={out_dir}"]), show_progress=False)
    if rank == int(nan_rank):
        batch_loss = trainer.batch_loss
        calls = []

        def first_loss_nan(batch):
            loss, parts = batch_loss(batch)
            calls.append(1)
            if len(calls) == 1:
                loss, parts = loss * math.nan, {**parts, "total": math.nan}
            return loss, parts

        trainer.batch_loss = first_loss_nan
    trainer.fit()
    params = {n: p.detach().clone() for n, p in trainer.raw_model.named_parameters() if p.requires_grad}
    torch.save({"params": params, "nonfinite_steps": trainer.nonfinite_steps, "global_step": trainer.global_step,
                "out_dir": out_dir, "world_size": trainer.dist.world_size}, os.path.join(params_dir, f"rank{rank}.pt"))
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
