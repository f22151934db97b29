"""GPU path: a Qwen3-0.6B-shaped reward model trained by rayrm (Ray Train + DeepSpeed, nccl, bf16) on one GPU.

    python bench/gpu_train_bench.py --tokenizer DIR [--data FILE] [--max-length 1024] [--micro-batch 8] [--zero 2]
    python bench/gpu_train_bench.py --tokenizer DIR --micro-batch 16     # the published run (docs/benchmarks.md)

The model is built from `configs/models/qwen3-0.6b-shape` (Qwen3-0.6B's layer shapes, random init, so no model hub
is needed); the data are the HH pairs. One run of `rayrm train`'s `run_training` with `scaling.use_gpu=true`, then
offline scoring of the held-out rows with the export (`RewardScorer`, bf16). Printed: training pairs/s and real
(non-pad) tokens/s, model FLOP/s = 6 x non-embedding params x tokens/s (attention score FLOPs not counted) as a fraction of
the bf16 matmul peak measured in the same process (8192^3 products), and scoring tokens/s (2 x params x tokens).
Accuracy of a random-init model after one short epoch is not a quality figure (see configs/train/minilm_hh.yaml).
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

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def matmul_peak(dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """Measured FLOP/s of an n^3 matmul on the current GPU (mean of `reps` after 3 warm-ups)."""
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "configs/models/qwen3-0.6b-shape"))
    ap.add_argument("--tokenizer", required=True, help="any local tokenizer dir (ids fit the 151936 vocab)")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl"))
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=8, help="pairs per step (2x sequences)")
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", default="/tmp/rayrm-gpu-bench")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this bench needs a GPU"

    import ray

    from rayrm.config import TrainConfig, load_config
    from rayrm.data import read_preferences, special_layout, tokenize_pairs
    from rayrm.infer import RewardScorer
    from rayrm.model import load_reward_model, load_tokenizer
    from rayrm.train import run_training

    res: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    res["bf16_peak_tflops"] = matmul_peak(torch.bfloat16) / 1e12
    torch.cuda.empty_cache()

    tok = load_tokenizer(args.tokenizer)
    model = load_reward_model(args.model, tok)
    n_all = sum(p.numel() for p in model.parameters())
    n_emb = model.get_input_embeddings().weight.numel()
    res["params"], res["non_embedding_params"] = n_all, n_all - n_emb
    del model

    # real tokens per pair under rayrm's truncation (all rows; the train split is a seeded 90% of them)
    rows = read_preferences(args.data)[0]
    c, r, _ = tokenize_pairs([x["prompt"] for x in rows], [x["chosen"] for x in rows], [x["rejected"] for x in rows],
                             tok, args.max_length, special_layout(tok))
    tokens_per_pair = sum(len(a) + len(b) for a, b in zip(c, r)) / len(rows)
    res["tokens_per_pair"] = tokens_per_pair

    ray.init(num_gpus=1, include_dashboard=False)
    cfg = load_config(None, [
        "name=gpu-bench", f"output_dir={args.out}", f"model={args.model}", f"tokenizer={args.tokenizer}",
        f"data.path={args.data}", f"data.max_length={args.max_length}", "data.eval_fraction=0.1",
        f"deepspeed.zero_stage={args.zero}", "deepspeed.precision=bf16", "scaling.num_workers=1",
        "scaling.use_gpu=true", "scaling.cpus_per_worker=4", f"train.micro_batch_size={args.micro_batch}",
        f"train.epochs={args.epochs}", "train.eval_every=0", "train.checkpoint_every=0", "optim.lr=1e-5",
        "train.log_every=20", "train.eval_batch_size=32",
    ], TrainConfig)
    m = run_training(cfg)
    pps = m["train_pairs_per_s"]
    res.update({"train_pairs_per_s": pps, "train_tokens_per_s": pps * tokens_per_pair, "train_wall_s": m["wall_s"],
                "eval_accuracy": m.get("eval_accuracy"), "zero_stage": args.zero, "micro_batch_pairs": args.micro_batch,
                "max_length": args.max_length})
    res["train_mfu"] = 6 * res["non_embedding_params"] * res["train_tokens_per_s"] / (res["bf16_peak_tflops"] * 1e12)
    ray.shutdown()

    # offline scoring of every row's two completions with the export, bf16 on the GPU
    scorer = RewardScorer(os.path.join(args.out, "final"), dtype="bf16", token_budget=65536, max_batch_rows=512)
    seqs = c + r
    scorer.score_ids(seqs[:512])  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    scorer.score_ids(seqs)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t
    n_tok = sum(len(s) for s in seqs)
    res.update({"score_rows_per_s": len(seqs) / secs, "score_tokens_per_s": n_tok / secs})
    res["score_mfu"] = 2 * res["non_embedding_params"] * res["score_tokens_per_s"] / (res["bf16_peak_tflops"] * 1e12)

    print("GPU_BENCH " + json.dumps(res, sort_keys=True), flush=True)
    print(f"\n{res['gpu']}: bf16 matmul peak {res['bf16_peak_tflops']:.0f} TFLOP/s measured")
    print(f"train (Ray Train + DeepSpeed ZeRO-{args.zero}, bf16, nccl, 1 worker): {pps:.1f} pairs/s, "
          f"{res['train_tokens_per_s']:.0f} tokens/s, MFU {100 * res['train_mfu']:.1f}%")
    print(f"score (RewardScorer bf16): {res['score_rows_per_s']:.0f} rows/s, {res['score_tokens_per_s']:.0f} tokens/s, "
          f"MFU {100 * res['score_mfu']:.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
