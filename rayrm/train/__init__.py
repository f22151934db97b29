"""Reward-model training with Ray Train + DeepSpeed, in layers that each make sense alone:

    engine.py     model, DeepSpeed engine, per-task loss, micro-batches      (no Ray)
    loop.py       the per-worker loop: micro-batches in, optimizer steps out  (no Ray)
    evaluate.py   held-out metrics over every rank                           (no Ray)
    export.py     the trained model as an export (HF dir + rayrm.json)       (no Ray)
    ray_train.py  the Ray Train adapter: shards, checkpoints, reports, progress
    driver.py     the job: data, TorchTrainer, <output_dir>/final

`run_training(cfg)` is the whole job.
"""

from rayrm.train.driver import prepare_datasets, run_training

__all__ = ["prepare_datasets", "run_training"]
