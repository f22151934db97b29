"""Where a GPU training step's time goes: rayrm's DeepSpeed engine (the same `setup_engine` the Ray Train loop
uses) timed phase by phase, on one GPU, outside Ray (one nccl rank), for several ZeRO stages and micro-batch sizes.

    python bench/gpu_step_profile.py --tokenizer DIR [--data FILE] [--model DIR] [--steps 12] [--configs 2:8,0:8,2:16]
    python bench/gpu_step_profile.py --tokenizer DIR --configs 0:8       # the published profile (docs/benchmarks.md)

Per configuration: ms per step for collate+copy, forward, backward and optimizer step (CUDA-synchronised), real
tokens/s, and MFU = 6 x non-embedding params x real tokens/s over the measured bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "configs/models/qwen3-0.6b-shape"))
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl"))
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--configs", default="2:8,0:8,2:16", help="zero:micro_batch_pairs,...")
    ap.add_argument("--trace", action="store_true", help="print torch.profiler's top CUDA/CPU ops of the first config")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import deepspeed

    from bench.gpu_train_bench import matmul_peak
    from rayrm.config import TrainConfig, load_config
    from rayrm.batching import pad_batch
    from rayrm.data import read_preferences, special_layout, tokenize_pairs
    from rayrm.model import load_tokenizer
    from rayrm.train.engine import setup_engine, step_loss_for

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29511", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="nccl")
    torch.cuda.set_device(0)
    peak = matmul_peak(torch.bfloat16)
    tok = load_tokenizer(args.tokenizer)
    rows = read_preferences(args.data)[0]
    c, r, _ = tokenize_pairs([x["prompt"] for x in rows], [x["chosen"] for x in rows], [x["rejected"] for x in rows],
                             tok, args.max_length, special_layout(tok))
    pair_len = np.array([max(len(a), len(b)) for a, b in zip(c, r)])
    order = np.argsort(pair_len)  # length-grouped, as the loop's buffers give
    out = []
    for spec in args.configs.split(","):
        zero, mb = (int(x) for x in spec.split(":"))
        cfg = load_config(None, [f"model={args.model}", f"tokenizer={args.tokenizer}", f"deepspeed.zero_stage={zero}",
                                 "deepspeed.precision=bf16", f"train.micro_batch_size={mb}"], TrainConfig)
        engine, _ = setup_engine(cfg, 1000)
        step_loss = step_loss_for(cfg)
        n_non_emb = sum(p.numel() for p in engine.module.parameters()) - engine.module.model.get_input_embeddings().weight.numel() \
            if zero != 3 else None
        rng = np.random.default_rng(0)
        starts = rng.integers(0, len(order) - mb, size=args.steps + 2)
        t = {"collate": 0.0, "forward": 0.0, "backward": 0.0, "step": 0.0}
        tokens = 0
        prof = None
        if args.trace and not out:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
        for i, s0 in enumerate(starts):
            if i == 2 and prof is not None:
                prof.__enter__()
            idx = order[s0 : s0 + mb]
            t0 = time.perf_counter()
            seqs = [c[j] for j in idx] + [r[j] for j in idx]
            ids, mask = pad_batch(seqs, tok.pad_token_id, "right")
            g = len(idx)
            index = torch.stack([torch.arange(g), torch.arange(g) + g], 1)
            batch = {"input_ids": ids, "attention_mask": mask, "index": index, "group_mask": index >= 0,
                     "margin": torch.zeros(g)}
            batch = {k: v.to(engine.device, non_blocking=True) for k, v in batch.items()}
            weight = torch.ones(g, device=engine.device)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            loss = step_loss(engine, batch, weight)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            engine.backward(loss)
            torch.cuda.synchronize()
            t3 = time.perf_counter()
            engine.step()
            loss.item()
            torch.cuda.synchronize()
            t4 = time.perf_counter()
            if i >= 2:  # two warm-up steps
                for k, a, b in (("collate", t0, t1), ("forward", t1, t2), ("backward", t2, t3), ("step", t3, t4)):
                    t[k] += b - a
                tokens += int(mask.sum())
        if prof is not None:
            prof.__exit__(None, None, None)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
        total = sum(t.values())
        res = {"zero": zero, "micro_batch_pairs": mb, **{f"{k}_ms": 1000 * v / args.steps for k, v in t.items()},
               "tokens_per_s": tokens / total, "pairs_per_s": mb * args.steps / total}
        if n_non_emb:
            res["mfu"] = 6 * n_non_emb * res["tokens_per_s"] / peak
        print("STEP_PROFILE " + json.dumps(res), flush=True)
        out.append(res)
        del engine
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bf16_peak_tflops": peak / 1e12, "runs": out}, f, indent=2)


if __name__ == "__main__":
    main()
