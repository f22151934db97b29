"""Generative LLM judge: any local causal LM compares two responses; runs as a Ray Data scorer over pairs.

For a pair (prompt, response A, response B) the judge reads the next-token logits after a judging prompt that
ends in "Verdict:", at the two verdict tokens, so decoding is greedy (temperature 0, the verdict is the argmax) and
P(A better) = softmax over the two verdict logits. Each pair is judged in both orders (A/B and B/A) and the two
probabilities averaged, so a position bias cancels: judge(a, b) = 1 - judge(b, a) exactly.

    rayrm judge --config configs/judge/default.yaml model=Qwen/Qwen3-0.6B input=pairs.jsonl output=/tmp/judged
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from rayrm.config import ConfigError
from rayrm.errors import UserError

DEFAULT_TEMPLATE = (
    "You are a careful judge. Which response answers the user better?\n\n"
    "User: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
    "Answer with A or B.\nVerdict:"
)


class Judge:
    """A causal LM used as a pairwise judge. Loaded once per Ray Data actor."""

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        verdicts: Sequence[str] = (" A", " B"),
        max_length: int = 1024,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        seed: int = 0,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from rayrm.model import has_weights, resolve_model_path

        path = resolve_model_path(model)
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(tokenizer or model), trust_remote_code=trust_remote_code)
        self.tokenizer.model_max_length = 10**9  # rayrm cuts judging prompts itself (keeping their end)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        from rayrm.hardware import inference_dtype

        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[inference_dtype(dtype, "cpu")]  # runs on CPU
        if os.path.isdir(path) and not has_weights(path):  # a config dir: seeded random init (tests, demos)
            torch.manual_seed(seed)
            self.model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch_dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        self.model.eval()
        self.template = template
        self.max_length = max_length
        ids = [self.tokenizer(v, add_special_tokens=False)["input_ids"] for v in verdicts]
        for v, i in zip(verdicts, ids):
            if len(i) != 1:
                raise ConfigError(f"verdict {v!r} must be one token for this tokenizer, got {len(i)} tokens")
        self.verdict_ids = [i[0] for i in ids]
        if self.verdict_ids[0] == self.verdict_ids[1]:
            raise ConfigError(f"verdicts {list(verdicts)} map to the same token")

    def _render(self, prompt: str, a: str, b: str) -> list[int]:
        """Token ids of the judging prompt; over max_length the start is cut (the verdict cue stays at the end)."""
        ids = self.tokenizer(self.template.format(prompt=prompt, a=a, b=b), add_special_tokens=False)["input_ids"]
        return ids[-self.max_length :]

    @torch.inference_mode()
    def _p_first(self, seqs: list[list[int]], batch_size: int) -> np.ndarray:
        """P(first verdict) for each judging prompt: softmax over the two verdict logits at the next position."""
        from rayrm.batching import pad_batch
        from rayrm.model import position_ids_from_mask

        out = np.empty(len(seqs), dtype=np.float64)
        order = np.argsort([-len(s) for s in seqs], kind="stable")  # similar lengths together: little padding
        for k in range(0, len(order), batch_size):
            idx = order[k : k + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], self.tokenizer.pad_token_id, "left")
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
            two = logits[:, -1, self.verdict_ids].double()  # left padding: the last position is real for every row
            out[idx] = torch.softmax(two, dim=-1)[:, 0].numpy()
        return out

    def judge(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], batch_size: int = 8) -> np.ndarray:
        """P(response a better than response b) per pair, averaged over both presentation orders."""
        n = len(prompts)
        seqs = [self._render(p, x, y) for p, x, y in zip(prompts, a, b, strict=True)]
        seqs += [self._render(p, y, x) for p, x, y in zip(prompts, a, b, strict=True)]
        p = self._p_first(seqs, batch_size)
        return ((p[:n] + (1.0 - p[n:])) / 2).astype(np.float32)  # order 2 shows b first: P(a better) = P("B")


class JudgeActor:
    """Ray Data callable class: pairs in (`prompt`, `a`/`b` fields from config), `p_a_better` and `verdict` out."""

    def __init__(self, judge_kwargs: dict[str, Any], a_field: str, b_field: str, batch_size: int):
        self.judge = Judge(**judge_kwargs)
        self.a_field, self.b_field, self.batch_size = a_field, b_field, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self.judge.judge([str(x) for x in batch["prompt"]], [str(x) for x in batch[self.a_field]],
                             [str(x) for x in batch[self.b_field]], self.batch_size)
        return {**batch, "p_a_better": p, "verdict": np.where(p >= 0.5, "A", "B")}


def run_judging(cfg: Any) -> dict[str, Any]:
    """Judge every pair of `cfg.input` (JSONL/Parquet with prompt + two responses) into Parquet at `cfg.output`."""
    import ray
    import ray.data

    import pyarrow.parquet as pq

    from rayrm.progress import Counter
    from rayrm.score import count_input_rows, list_input_files

    if not ray.is_initialized():
        ray.init()
    files = list_input_files(cfg.input)
    ds = ray.data.read_parquet(files) if files[0].endswith(".parquet") else ray.data.read_json(files)
    ds = ds.repartition(target_num_rows_per_block=cfg.block_rows)  # progress per block, every actor busy
    missing = {"prompt", cfg.a_field, cfg.b_field} - set(ds.schema().names)
    if missing:
        raise UserError(f"{cfg.input}: missing column(s) {sorted(missing)} (a_field/b_field name the two responses)")
    kwargs = {"model": cfg.model, "tokenizer": cfg.tokenizer, "max_length": cfg.max_length, "dtype": cfg.dtype,
              "verdicts": tuple(cfg.verdicts), **({"template": cfg.template} if cfg.template else {})}
    ds = ds.map_batches(JudgeActor, fn_constructor_kwargs={"judge_kwargs": kwargs, "a_field": cfg.a_field,
                        "b_field": cfg.b_field, "batch_size": cfg.batch_size},
                        batch_size=cfg.block_rows, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
                        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None)
    # judged blocks are written by the driver as they arrive, one Parquet part each, with a progress line
    os.makedirs(cfg.output, exist_ok=True)
    for old in os.listdir(cfg.output):
        if old.startswith("part-") and old.endswith(".parquet"):
            os.remove(os.path.join(cfg.output, old))
    progress = Counter("judged", "pairs", count_input_rows(files), prefix="rayrm.judge")
    n = a_preferred = 0
    for i, block in enumerate(ds.iter_batches(batch_size=None, batch_format="pyarrow")):
        pq.write_table(block, os.path.join(cfg.output, f"part-{i:05d}.parquet"))
        n += block.num_rows
        a_preferred += sum(v == "A" for v in block["verdict"].to_pylist())
        progress.add(block.num_rows)
    progress.add(0, force=True)
    return {"pairs": n, "a_preferred": a_preferred, "output": cfg.output}
