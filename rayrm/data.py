"""Preference data: reading, validation, chat rendering, tokenisation with a truncation policy, collation.

Rows follow TRL's formats: standard (`prompt`/`chosen`/`rejected` strings, or `chosen`/`rejected` with an implicit
shared prompt) and conversational (lists of `{"role", "content"}` messages). An optional numeric `margin` column is
kept. A malformed row raises `BadRowError` naming the file, line (JSONL) or row (Parquet/dataset) and the field, or,
with `on_bad_row="skip"`, is skipped and counted.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from rayrm.batching import group_sequences, pack_sequences, pad_batch
from rayrm.errors import InputNotFoundError, UserError

RESPONSE_FIELDS = ("chosen", "rejected")


class BadRowError(UserError, ValueError):
    """A preference row that cannot be used; the message names file, line/row and field."""


@dataclass
class ReadReport:
    """What reading a preference file kept and skipped."""

    rows: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # first few skip reasons, for the log


# ---------------------------------------------------------------- reading
def _iter_raw_rows(path: str, split: str) -> Iterator[tuple[str, Any]]:
    """Yield (location, raw row) pairs; location is `file:line N` or `file:row N`. Bad JSON yields an exception."""
    if path.endswith(".jsonl") or path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                loc = f"{path}:line {lineno}"
                try:
                    yield loc, json.loads(line)
                except json.JSONDecodeError as e:
                    yield loc, BadRowError(f"{loc}: invalid JSON ({e.msg} at column {e.colno})")
    elif path.endswith(".parquet") or (os.path.isdir(path) and any(p.endswith(".parquet") for p in os.listdir(path))):
        import pyarrow.parquet as pq

        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(path, p) for p in os.listdir(path) if p.endswith(".parquet")
        )
        for fp in files:
            for i, row in enumerate(pq.read_table(fp).to_pylist()):
                yield f"{fp}:row {i}", row
    else:
        import datasets

        saved = ("dataset_info.json", "state.json", "dataset_dict.json")
        if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in saved):
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(path, split=split)
        for i, row in enumerate(ds):
            yield f"{path}[{split}]:row {i}", row


def _check_messages(value: Any, loc: str, name: str) -> None:
    if len(value) == 0:
        raise BadRowError(f"{loc}: field '{name}' is an empty message list")
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRowError(f"{loc}: field '{name}[{j}]' must be a {{'role': str, 'content': str}} message")


def _number(value: Any, loc: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRowError(f"{loc}: field '{name}' must be a finite number, got {value!r}")
    return float(value)


def _validate_ranked(raw: dict[str, Any], loc: str, max_k: int | None) -> dict[str, Any]:
    """{prompt, completions: [K], ranking: [K] (1 = best) | scores: [K] (higher = better)} ->
    {prompt, completions ordered best first}. Ties in `scores` keep the input order."""
    prompt, comps = raw.get("prompt"), raw["completions"]
    if prompt is None:
        raise BadRowError(f"{loc}: missing field 'prompt' (ranked rows need an explicit prompt)")
    if isinstance(prompt, list):
        _check_messages(prompt, loc, "prompt")
    elif not isinstance(prompt, str):
        raise BadRowError(f"{loc}: field 'prompt' must be a string or a message list, got {type(prompt).__name__}")
    if not isinstance(comps, list) or len(comps) < 2:
        raise BadRowError(f"{loc}: field 'completions' must be a list of at least 2 completions")
    for j, c in enumerate(comps):
        if isinstance(c, list):
            _check_messages(c, loc, f"completions[{j}]")
        elif not isinstance(c, str):
            raise BadRowError(f"{loc}: field 'completions[{j}]' must be a string or a message list, got {type(c).__name__}")
        if isinstance(c, list) != isinstance(prompt, list):
            raise BadRowError(f"{loc}: field 'completions[{j}]' mixes conversational and plain-text formats")
    if max_k is not None and len(comps) > max_k:
        raise BadRowError(f"{loc}: {len(comps)} completions, but train.loss takes pairs; use plackett_luce or grouped_pairs")
    if raw.get("ranking") is not None:
        rank = raw["ranking"]
        if not isinstance(rank, list) or sorted(rank) != list(range(1, len(comps) + 1)) or any(isinstance(x, bool) for x in rank):
            raise BadRowError(f"{loc}: field 'ranking' must rank each completion once, 1 = best .. {len(comps)}, got {rank!r}")
        order = sorted(range(len(comps)), key=lambda i: rank[i])
    elif raw.get("scores") is not None:
        sc = raw["scores"]
        if not isinstance(sc, list) or len(sc) != len(comps):
            raise BadRowError(f"{loc}: field 'scores' must be a list of {len(comps)} numbers, one per completion")
        vals = [_number(x, loc, f"scores[{i}]") for i, x in enumerate(sc)]
        order = sorted(range(len(comps)), key=lambda i: -vals[i])
    else:
        raise BadRowError(f"{loc}: missing field 'ranking' or 'scores' (ranked rows need one)")
    return {"prompt": prompt, "completions": [comps[i] for i in order]}


def validate_row(
    raw: Any,
    loc: str,
    require_margin: bool = False,
    rating_fields: tuple[str, str] | None = None,
    max_k: int | None = None,
) -> dict[str, Any]:
    """Check one raw row. Pairs -> {prompt, chosen, rejected[, margin]} (prompt may be absent: implicit); ranked rows
    -> {prompt, completions (best first)}. `rating_fields` (chosen, rejected) turns two rating columns into the
    margin (Llama 2 style); `max_k` rejects rows with more completions than the loss takes."""
    if isinstance(raw, BadRowError):
        raise raw
    if not isinstance(raw, dict):
        raise BadRowError(f"{loc}: row must be a JSON object, got {type(raw).__name__}")
    if raw.get("completions") is not None:
        return _validate_ranked(raw, loc, max_k)
    conversational = None
    for name in ("prompt", *RESPONSE_FIELDS):
        if name not in raw or raw[name] is None:
            if name == "prompt":
                continue
            raise BadRowError(f"{loc}: missing field '{name}'")
        value = raw[name]
        if isinstance(value, list):
            _check_messages(value, loc, name)
            kind = True
        elif isinstance(value, str):
            kind = False
        else:
            raise BadRowError(f"{loc}: field '{name}' must be a string or a message list, got {type(value).__name__}")
        if conversational is not None and kind != conversational:
            raise BadRowError(f"{loc}: field '{name}' mixes conversational and plain-text formats")
        conversational = kind
    row = {k: raw[k] for k in ("prompt", *RESPONSE_FIELDS) if raw.get(k) is not None}
    margin = raw.get("margin")
    if rating_fields is not None:
        for name in rating_fields:
            if raw.get(name) is None:
                raise BadRowError(f"{loc}: missing field '{name}' (data.rating_fields names it)")
        row["margin"] = _number(raw[rating_fields[0]], loc, rating_fields[0]) - _number(raw[rating_fields[1]], loc, rating_fields[1])
    elif margin is not None:
        row["margin"] = _number(margin, loc, "margin")
    elif require_margin:
        raise BadRowError(f"{loc}: missing field 'margin' (train.loss is 'margin'; or set data.rating_fields)")
    return row


def check_data_path(path: str) -> None:
    """A local data file or directory must exist (a name like `org/dataset` is a hub dataset: checked on load)."""
    if not (os.path.exists(path) or "/" in path and not path.startswith((".", "/"))):
        raise InputNotFoundError(
            f"data {path!r} not found (cwd {os.getcwd()}); a `ray job submit` runs in a copy of the "
            "working dir, so pass an absolute path there"
        )


def read_rows(path: str, validate: Any, split: str = "train", on_bad_row: str = "error") -> tuple[list[dict[str, Any]], ReadReport]:
    """All rows of a JSONL/Parquet/`datasets` source that `validate(raw, loc)` accepts, in file order, plus a report
    of skipped rows (`on_bad_row="skip"`); otherwise the first bad row raises, naming file, line/row and field."""
    check_data_path(path)
    rows: list[dict[str, Any]] = []
    report = ReadReport()
    for loc, raw in _iter_raw_rows(path, split):
        try:
            rows.append(validate(raw, loc))
        except BadRowError as e:
            if on_bad_row != "skip":
                raise
            report.skipped += 1
            if len(report.errors) < 20:
                report.errors.append(str(e))
    report.rows = len(rows)
    if not rows:
        raise BadRowError(f"{path}: no valid rows (skipped {report.skipped})")
    return rows, report


def read_preferences(
    path: str,
    split: str = "train",
    on_bad_row: str = "error",
    require_margin: bool = False,
    rating_fields: tuple[str, str] | None = None,
    max_k: int | None = None,
) -> tuple[list[dict[str, Any]], ReadReport]:
    """All valid preference rows (pairs or rankings) of a source, in file order, plus a report of skipped rows."""
    return read_rows(path, lambda raw, loc: validate_row(raw, loc, require_margin, rating_fields, max_k), split, on_bad_row)


# ---------------------------------------------------------------- rendering to text
def _render_plain(messages: list[dict[str, str]]) -> str:
    """Fallback chat rendering for tokenizers without a chat template."""
    return "".join(f"\n\n{m['role'].capitalize()}: {m['content']}" for m in messages)


HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def hh_to_messages(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A row whose prompt is Anthropic HH text (`\n\nHuman: ...\n\nAssistant: ...\n\nAssistant:`) -> the same row
    as chat messages: the dialogue as user/assistant turns, each response as one assistant turn. A tokenizer's chat
    template then renders it the way the model was instruction-tuned (`data.hh_messages`). Rows already in messages
    pass through; a prompt not in that form is an error naming `where` (file and row), never silently kept as text."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        return row
    parts = HH_TURN.split(prompt)
    if parts[0].strip() or len(parts) < 3 or parts[-2] != "Assistant" or parts[-1].strip():
        raise BadRowError(f"{where}: field 'prompt' is not HH dialogue text ('\\n\\nHuman: ...\\n\\nAssistant:'), "
                          "which data.hh_messages=true expects")
    turns = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
             for who, text in zip(parts[1:-2:2], parts[2:-2:2])]
    out = {**row, "prompt": turns}
    for k in (*RESPONSE_FIELDS, "completions"):
        if k == "completions" and isinstance(row.get(k), list):
            out[k] = [[{"role": "assistant", "content": c.strip()}] if isinstance(c, str) else c for c in row[k]]
        elif isinstance(row.get(k), str):
            out[k] = [{"role": "assistant", "content": row[k].strip()}]
    return out


def render_row(row: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Row in any TRL preference format -> {prompt: str, chosen: str, rejected: str[, margin]}.

    Uses TRL's own utilities: `maybe_extract_prompt` splits an implicit shared prompt off, `is_conversational`
    detects messages, `maybe_apply_chat_template` renders them with the tokenizer's chat template.
    """
    from trl.data_utils import is_conversational, maybe_apply_chat_template, maybe_extract_prompt

    ex = {k: row[k] for k in ("prompt", *RESPONSE_FIELDS) if k in row}
    if "prompt" not in ex:
        ex = maybe_extract_prompt(ex)
    if is_conversational(ex):
        if getattr(tokenizer, "chat_template", None):
            out = maybe_apply_chat_template(ex, tokenizer)
        else:
            out = {k: _render_plain(v) for k, v in ex.items()}
            out["prompt"] += "\n\nAssistant:"
            for k in RESPONSE_FIELDS:
                out[k] = out[k].replace("\n\nAssistant: ", " ", 1) if out[k].startswith("\n\nAssistant: ") else out[k]
        ex = {k: out[k] for k in ("prompt", *RESPONSE_FIELDS)}
    ex.setdefault("prompt", "")
    if "margin" in row:
        ex["margin"] = row["margin"]
    return ex


def render_group(row: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Any validated row -> {prompt: str, completions: [str] best first[, margin]}; a pair is [chosen, rejected]."""
    if "completions" in row:
        rendered = [render_completion(row["prompt"], c, tokenizer) for c in row["completions"]]
        out: dict[str, Any] = {"prompt": rendered[0][0], "completions": [c for _, c in rendered]}
    else:
        r = render_row(row, tokenizer)
        out = {"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"]]}
    if "margin" in row:
        out["margin"] = row["margin"]
    return out


def render_completion(prompt: Any, completion: Any, tokenizer: Any) -> tuple[str, str]:
    """One rollout -> (prompt text, completion text), rendered the way training rendered a preference row.

    Plain strings pass through. Message lists (`prompt` a list of messages, `completion` a list with the final
    assistant message) go through TRL's `maybe_apply_chat_template` when the tokenizer has a chat template, and
    through the same plain `\n\nHuman: ...\n\nAssistant:` fallback as `render_row` otherwise.
    """
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion
    from trl.data_utils import maybe_apply_chat_template

    ex = {"prompt": prompt, "completion": completion}
    if getattr(tokenizer, "chat_template", None):
        out = maybe_apply_chat_template(ex, tokenizer)
        return out["prompt"], out["completion"]
    p = _render_plain(prompt) + "\n\nAssistant:"
    c = _render_plain(completion)
    if c.startswith("\n\nAssistant: "):
        c = " " + c[len("\n\nAssistant: "):]
    return p, c


# ---------------------------------------------------------------- tokenisation
@dataclass(frozen=True)
class SpecialLayout:
    """Special tokens the tokenizer wraps a sequence in, e.g. BERT: prefix [CLS], suffix [SEP]."""

    prefix: list[int]
    suffix: list[int]


def special_layout(tokenizer: Any, append_eos: bool = True) -> SpecialLayout:
    """Find what `add_special_tokens=True` puts around a text; decoders without a suffix get EOS appended."""
    probe_plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    probe_full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    n = len(probe_plain)
    for start in range(len(probe_full) - n + 1):
        if probe_full[start : start + n] == probe_plain:
            prefix, suffix = probe_full[:start], probe_full[start + n :]
            break
    else:  # tokenizer merges specials into the text; fall back to no specials
        prefix, suffix = [], []
    if append_eos and not suffix and tokenizer.eos_token_id is not None:
        suffix = [tokenizer.eos_token_id]
    return SpecialLayout(list(prefix), list(suffix))


def truncate_pair(prompt_ids: list[int], response_ids: list[int], budget: int) -> tuple[list[int], list[int], bool]:
    """Fit prompt+response into `budget` tokens: drop prompt tokens from the left first, then the start of the
    response, so the end of the response (where the reward is read) always survives. Returns (p, r, truncated)."""
    over = len(prompt_ids) + len(response_ids) - budget
    if over <= 0:
        return prompt_ids, response_ids, False
    if over <= len(prompt_ids):
        return prompt_ids[over:], response_ids, True
    return [], response_ids[len(response_ids) - budget :], True


def _with_layout(ids: list[int], layout: SpecialLayout) -> list[int]:
    """prefix + ids + suffix, without doubling a BOS that a chat template already rendered."""
    n = len(layout.prefix)
    prefix = [] if n and ids[:n] == layout.prefix else layout.prefix
    return prefix + ids + layout.suffix


def tokenize_texts(
    prompts: list[str], responses: list[str], tokenizer: Any, max_length: int, layout: SpecialLayout
) -> tuple[list[list[int]], list[bool]]:
    """Token ids (prefix + prompt + response + suffix) per row and whether each row was truncated."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    budget = max_length - len(layout.prefix) - len(layout.suffix)
    out, truncated = [], []
    for p, r in zip(p_ids, r_ids, strict=True):
        p, r, cut = truncate_pair(p, r, budget)
        out.append(_with_layout(p + r, layout))
        truncated.append(cut)
    return out, truncated


def tokenize_groups(
    prompts: list[str], groups: list[list[str]], tokenizer: Any, max_length: int, layout: SpecialLayout
) -> tuple[list[list[list[int]]], list[bool]]:
    """Token ids of prefix + prompt + completion + suffix for every completion of every group, and whether the group
    was truncated. The prompt is cut once per group (by its longest completion), so all completions of a prompt see
    the same prompt tokens: a length-dependent prompt cut would leak a length cue."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    flat = [c for g in groups for c in g]
    c_ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    budget = max_length - len(layout.prefix) - len(layout.suffix)
    out, truncated, at = [], [], 0
    for p, g in zip(p_ids, groups, strict=True):
        cs = c_ids[at : at + len(g)]
        at += len(g)
        p_cut, _, cut = truncate_pair(p, max(cs, key=len), budget)
        seqs = []
        for c in cs:
            p_fit, c_fit, cut_c = truncate_pair(p_cut, c, budget)
            seqs.append(_with_layout(p_fit + c_fit, layout))
            cut = cut or cut_c
        out.append(seqs)
        truncated.append(cut)
    return out, truncated


def tokenize_pairs(
    prompts: list[str], chosen: list[str], rejected: list[str], tokenizer: Any, max_length: int, layout: SpecialLayout
) -> tuple[list[list[int]], list[list[int]], list[bool]]:
    """`tokenize_groups` for pairs: (chosen ids, rejected ids, truncated)."""
    groups, truncated = tokenize_groups(prompts, [[c, r] for c, r in zip(chosen, rejected, strict=True)],
                                        tokenizer, max_length, layout)
    return [g[0] for g in groups], [g[1] for g in groups], truncated


class GroupTokenizer:
    """Ray Data batch function: a prompt and its completions (best first) -> token ids.

    Output columns: `ids` (all K sequences concatenated, int32), `lens` (K lengths), `weight`, `margin`, `truncated`.
    One row holds one whole group, so sharding and batching never split a pair or a ranking. Loads the tokenizer
    once per worker process, unless `tokenizer` passes one already loaded.
    """

    def __init__(self, tokenizer_name: str, max_length: int, trust_remote_code: bool = False, append_eos: bool = True,
                 tokenizer: Any = None):
        from rayrm.model import load_tokenizer

        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_name, trust_remote_code)
        self.tokenizer.model_max_length = 10**9  # we truncate ourselves; silences the over-length warning
        self.max_length = max_length
        self.layout = special_layout(self.tokenizer, append_eos)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        prompts = [str(p) for p in batch["prompt"]]
        if "completions" in batch:
            groups = [[str(c) for c in g] for g in batch["completions"]]
        else:
            groups = [[str(c), str(r)] for c, r in zip(batch["chosen"], batch["rejected"])]
        seqs, cut = tokenize_groups(prompts, groups, self.tokenizer, self.max_length, self.layout)
        n = len(prompts)
        weight = np.asarray(batch["weight"], dtype=np.float32) if "weight" in batch else np.ones(n, np.float32)
        return {
            "ids": [np.asarray([t for s in g for t in s], dtype=np.int32) for g in seqs],
            "lens": [np.asarray([len(s) for s in g], dtype=np.int32) for g in seqs],
            "weight": weight,
            "truncated": (np.asarray(cut, dtype=bool) & (weight > 0)).astype(np.int8),  # filler copies not counted
            "margin": np.asarray(batch["margin"], dtype=np.float32) if "margin" in batch else np.zeros(n, np.float32),
        }


PairTokenizer = GroupTokenizer  # a pair is a group of two


# ---------------------------------------------------------------- collation
def collate_groups(
    batch: dict[str, Any], pad_id: int, padding_side: str = "right", pack: str = "off"
) -> dict[str, torch.Tensor]:
    """Ray batch of g groups -> one forward batch of all their sequences plus the group layout.

    Sequences are laid out rank-major (every group's best, then every group's second, ...), so for pairs rows
    [0, g) are chosen and [g, 2g) rejected. `index` (g, K) points each group's completions (best first) at their
    rows, -1 where a group has fewer than K; `mask` (g, K) marks the real ones. Scores: `rewards[index] * mask`.
    `pack` "rows"/"row" packs the sequences (`rayrm.batching.pack_sequences`; "row": all in one row) instead of
    padding them: input_ids, position_ids, last, cu_seq_lens, max_length replace input_ids, attention_mask.
    Either way `seq_len` (n,) holds each sequence's length.
    """
    per_group = [group_sequences(i, n) for i, n in zip(batch["ids"], batch["lens"])]
    g = len(per_group)
    k = max(len(x) for x in per_group)
    index = torch.full((g, k), -1, dtype=torch.long)
    seqs = []
    for r in range(k):
        for j, x in enumerate(per_group):
            if r < len(x):
                index[j, r] = len(seqs)
                seqs.append(x[r])
    if pack == "off":
        ids, mask = pad_batch(seqs, pad_id, padding_side)
        model_in = {"input_ids": ids, "attention_mask": mask, "seq_len": mask.sum(-1)}
    else:
        model_in = pack_sequences(seqs, pad_id, one_row=pack == "row")
    return {
        **model_in,
        "index": index,
        "group_mask": index >= 0,
        "margin": torch.tensor(np.asarray(batch["margin"], dtype=np.float32)),
        "truncated": torch.tensor(np.asarray(batch["truncated"]) > 0),
    }


def split_rows(rows: list[dict[str, Any]], eval_fraction: float, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded random hold-out: (train, eval). At least one eval row when eval_fraction > 0."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(rows))
    n_eval = max(1, int(round(len(rows) * eval_fraction))) if eval_fraction > 0 else 0
    eval_idx = set(perm[:n_eval].tolist())
    train = [rows[i] for i in perm[n_eval:]]
    held = [rows[i] for i in sorted(eval_idx)]
    return train, held
