"""Outcome and process reward models (ORM, PRM): rows, token labels, collation. Token-level heads, no pairs.

- ORM rows `{prompt, completion, correct}`: the outcome label (1 correct / 0 incorrect) is copied onto every
  completion token; prompt and special tokens get IGNORE; trained with per-token BCE. At inference the per-token
  probabilities are aggregated by mean, min or product.
- PRM rows `{prompt, steps: [...], labels: [...]}` with labels +1 / 0 / -1 per step: each step ends at a boundary
  token (the last token of the step plus its separator); only boundary tokens carry a label (classes 0: -1, 1: 0,
  2: +1); trained with 3-class cross-entropy. Inference gives one score per step, P(+1), and an aggregate
  (min, product or last).

Both keep training's truncation policy: the prompt is cut from the left first, then the start of the completion,
so the end of the solution (and the final steps) survive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rayrm.data import BadRowError, SpecialLayout, _check_messages, render_completion, truncate_pair
from rayrm.losses import IGNORE

PRM_CLASSES = {-1: 0, 0: 1, 1: 2}  # step label -> class index


# ---------------------------------------------------------------- validation
def _text_or_messages(raw: dict[str, Any], loc: str, name: str) -> Any:
    v = raw.get(name)
    if v is None:
        raise BadRowError(f"{loc}: missing field '{name}'")
    if isinstance(v, list):
        _check_messages(v, loc, name)
    elif not isinstance(v, str):
        raise BadRowError(f"{loc}: field '{name}' must be a string or a message list, got {type(v).__name__}")
    return v


def validate_outcome_row(raw: Any, loc: str) -> dict[str, Any]:
    """{prompt, completion, correct (bool or 0/1)} -> the same, correct as 0.0/1.0."""
    if isinstance(raw, BadRowError):
        raise raw
    if not isinstance(raw, dict):
        raise BadRowError(f"{loc}: row must be a JSON object, got {type(raw).__name__}")
    row = {"prompt": _text_or_messages(raw, loc, "prompt"), "completion": _text_or_messages(raw, loc, "completion")}
    c = raw.get("correct")
    if c is None:
        raise BadRowError(f"{loc}: missing field 'correct'")
    if c not in (0, 1, True, False) or isinstance(c, float) and c not in (0.0, 1.0):
        raise BadRowError(f"{loc}: field 'correct' must be 1/0 or true/false, got {c!r}")
    row["correct"] = float(c)
    return row


def validate_process_row(raw: Any, loc: str) -> dict[str, Any]:
    """{prompt, steps: [str, ...], labels: [+1 | 0 | -1, ...]} -> the same."""
    if isinstance(raw, BadRowError):
        raise raw
    if not isinstance(raw, dict):
        raise BadRowError(f"{loc}: row must be a JSON object, got {type(raw).__name__}")
    prompt = _text_or_messages(raw, loc, "prompt")
    steps, labels = raw.get("steps"), raw.get("labels")
    if not isinstance(steps, list) or not steps:
        raise BadRowError(f"{loc}: field 'steps' must be a non-empty list of strings")
    for j, s in enumerate(steps):
        if not isinstance(s, str) or not s.strip():
            raise BadRowError(f"{loc}: field 'steps[{j}]' must be a non-empty string")
    if not isinstance(labels, list) or len(labels) != len(steps):
        raise BadRowError(f"{loc}: field 'labels' must be a list with one label per step ({len(steps)})")
    for j, lab in enumerate(labels):
        if isinstance(lab, bool) or lab not in PRM_CLASSES:
            raise BadRowError(f"{loc}: field 'labels[{j}]' must be +1, 0 or -1, got {lab!r}")
    return {"prompt": prompt, "steps": steps, "labels": [int(x) for x in labels]}


# ---------------------------------------------------------------- tokenisation with token labels
def _fit(prompt: list[int], resp: list[int], resp_labels: list[int], budget: int) -> tuple[list[int], list[int], bool]:
    """Truncate like `truncate_pair` and cut the response labels the same way -> (ids, labels, truncated)."""
    p, r, cut = truncate_pair(prompt, resp, budget)
    return p + r, [IGNORE] * len(p) + resp_labels[len(resp_labels) - len(r) :], cut


def _wrap(ids: list[int], labels: list[int], layout: SpecialLayout) -> tuple[list[int], list[int]]:
    n = len(layout.prefix)
    prefix = [] if n and ids[:n] == layout.prefix else layout.prefix
    return prefix + ids + layout.suffix, [IGNORE] * len(prefix) + labels + [IGNORE] * len(layout.suffix)


def tokenize_outcome(
    prompts: list[str], completions: list[str], correct: list[float], tokenizer: Any, max_length: int, layout: SpecialLayout
) -> tuple[list[list[int]], list[list[int]], list[bool]]:
    """ORM: ids, per-token labels (the outcome on every completion token, IGNORE elsewhere), truncated flags."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    budget = max_length - len(layout.prefix) - len(layout.suffix)
    ids, labels, cut = [], [], []
    for p, c, y in zip(p_ids, c_ids, correct, strict=True):
        i, lab, t = _fit(p, c, [int(y)] * len(c), budget)
        i, lab = _wrap(i, lab, layout)
        ids.append(i)
        labels.append(lab)
        cut.append(t)
    return ids, labels, cut


def step_ids(steps: list[str], labels: list[int] | None, tokenizer: Any, separator: str) -> tuple[list[int], list[int]]:
    """Token ids of steps joined by `separator` and the per-token labels: the class of each step at its boundary
    (its last token, separator included), IGNORE elsewhere. Steps are tokenised one by one, so boundaries are exact
    whatever the tokenizer does with the separator (BERT drops a newline: the boundary is then the step's last token)."""
    sep = tokenizer(separator, add_special_tokens=False)["input_ids"] if separator else []
    ids: list[int] = []
    out: list[int] = []
    for j, s in enumerate(steps):
        piece = tokenizer(s, add_special_tokens=False)["input_ids"] + sep
        ids += piece
        out += [IGNORE] * (len(piece) - 1) + [PRM_CLASSES[labels[j]] if labels is not None else 1]
    return ids, out


def tokenize_process(
    prompts: list[str], steps: list[list[str]], labels: list[list[int]] | None, tokenizer: Any, max_length: int,
    layout: SpecialLayout, separator: str = "\n",
) -> tuple[list[list[int]], list[list[int]], list[bool]]:
    """PRM: ids, per-token labels (class at step boundaries, IGNORE elsewhere), truncated flags. With labels=None
    (inference) every boundary is marked with class 1, so `labels != IGNORE` still finds the steps."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    budget = max_length - len(layout.prefix) - len(layout.suffix)
    ids, out, cut = [], [], []
    for k, p in enumerate(p_ids):
        r, lab = step_ids(steps[k], labels[k] if labels is not None else None, tokenizer, separator)
        i, lab, t = _fit(p, r, lab, budget)
        i, lab = _wrap(i, lab, layout)
        ids.append(i)
        out.append(lab)
        cut.append(t)
    return ids, out, cut


class TokenTaskTokenizer:
    """Ray Data batch function for ORM/PRM rows -> `ids`, `labels` (int32, per token), `target` (1 when the whole
    solution is correct), `weight`, `truncated`. Loads the tokenizer once per worker process, unless `tokenizer` passes
    one already loaded."""

    def __init__(self, task: str, tokenizer_name: str, max_length: int, separator: str = "\n",
                 trust_remote_code: bool = False, tokenizer: Any = None):
        from rayrm.data import special_layout
        from rayrm.model import load_tokenizer

        self.task = task
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_name, trust_remote_code)
        self.tokenizer.model_max_length = 10**9
        self.max_length = max_length
        self.separator = separator
        self.layout = special_layout(self.tokenizer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["prompt"])
        if self.task == "orm":
            rendered = [render_completion(p, c, self.tokenizer) for p, c in zip(batch["prompt"], batch["completion"])]
            target = np.asarray(batch["correct"], dtype=np.float32)
            ids, labels, cut = tokenize_outcome([r[0] for r in rendered], [r[1] for r in rendered], list(target),
                                                self.tokenizer, self.max_length, self.layout)
        else:
            prompts = [render_completion(p, "", self.tokenizer)[0] if isinstance(p, str) else
                       render_completion(p, [{"role": "assistant", "content": ""}], self.tokenizer)[0] for p in batch["prompt"]]
            labs = [list(x) for x in batch["labels"]]
            target = np.asarray([float(all(x == 1 for x in lab)) for lab in labs], dtype=np.float32)
            ids, labels, cut = tokenize_process(prompts, [list(s) for s in batch["steps"]], labs, self.tokenizer,
                                                self.max_length, self.layout, self.separator)
        weight = np.asarray(batch["weight"], dtype=np.float32) if "weight" in batch else np.ones(n, np.float32)
        return {
            "ids": [np.asarray(x, dtype=np.int32) for x in ids],
            "labels": [np.asarray(x, dtype=np.int32) for x in labels],
            "target": target,
            "weight": weight,
            "truncated": (np.asarray(cut, dtype=bool) & (weight > 0)).astype(np.int8),
        }


def collate_tokens(batch: dict[str, Any], pad_id: int) -> dict[str, torch.Tensor]:
    """Ray batch -> input_ids, attention_mask (b, s) right-padded, labels (b, s) padded with IGNORE, target (b,)."""
    from rayrm.batching import pad_batch

    ids, mask = pad_batch(list(batch["ids"]), pad_id, "right")
    labels = torch.full(ids.shape, IGNORE, dtype=torch.long)
    for i, lab in enumerate(batch["labels"]):
        labels[i, : len(lab)] = torch.as_tensor(np.asarray(lab, dtype=np.int64))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "target": torch.tensor(np.asarray(batch["target"], dtype=np.float32))}


def token_probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """(b, s[, C]) logits -> (b, s) probability that the token's solution (ORM) or step (PRM) is correct."""
    if task == "orm":
        return torch.sigmoid(logits.float().squeeze(-1) if logits.dim() == 3 else logits.float())
    return torch.softmax(logits.float(), dim=-1)[..., PRM_CLASSES[1]]
