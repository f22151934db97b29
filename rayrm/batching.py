"""Pure batching helpers (torch and numpy only): padding, length grouping, padding chunks and token-budget batches.

Shared by training (`rayrm.train`), scoring and serving (`rayrm.infer`) and the model's chunked forward
(`rayrm.model`); nothing here knows about tokenizers, models or Ray, so the tests run in milliseconds.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch


def group_sequences(ids: np.ndarray, lens: np.ndarray) -> list[np.ndarray]:
    """Split one row's concatenated ids back into its K sequences."""
    ends = np.cumsum(lens)
    return [ids[e - n : e] for e, n in zip(ends, lens)]


def pad_batch(seqs: list[list[int]] | list[np.ndarray], pad_id: int, padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences -> input_ids (b, s), attention_mask (b, s), padded to the longest."""
    s = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), s), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), s), dtype=torch.long)
    for i, x in enumerate(seqs):
        n = len(x)
        sl = slice(s - n, s) if padding_side == "left" else slice(0, n)
        ids[i, sl] = torch.as_tensor(np.asarray(x, dtype=np.int64))
        mask[i, sl] = 1
    return ids, mask


def padding_chunks(lengths: Any, max_chunks: int, per_chunk_cost: float = 0.03) -> list[np.ndarray]:
    """Split a batch's rows into at most `max_chunks` forwards of similar length, so each is padded only to its own
    longest row. Rows are sorted by length and cut into contiguous runs at the points that minimise padded tokens
    (exact DP); each extra forward must save `per_chunk_cost` of the one-forward cost to be taken. Returns index
    arrays into `lengths` (ascending lengths; together they cover every row exactly once)."""
    lens = np.asarray(lengths, dtype=np.int64)
    n = len(lens)
    order = np.argsort(lens, kind="stable")
    if max_chunks <= 1 or n < 2:
        return [order]
    srt = lens[order]
    k_max = min(max_chunks, n)
    inf = float("inf")
    # best[k][i]: least padded tokens for the first i sorted rows in k runs; a run (j, i] costs (i - j) * srt[i - 1]
    best = [[inf] * (n + 1) for _ in range(k_max + 1)]
    cut = [[0] * (n + 1) for _ in range(k_max + 1)]
    best[0][0] = 0.0
    for k in range(1, k_max + 1):
        for i in range(1, n + 1):
            for j in range(k - 1, i):
                v = best[k - 1][j] + (i - j) * float(srt[i - 1])
                if v < best[k][i]:
                    best[k][i], cut[k][i] = v, j
    one = best[1][n]
    k_best = min(range(1, k_max + 1), key=lambda k: best[k][n] + (k - 1) * per_chunk_cost * one)
    bounds, i = [], n
    for k in range(k_best, 0, -1):
        bounds.append((cut[k][i], i))
        i = cut[k][i]
    return [order[a:b] for a, b in reversed(bounds)]


def to_columns(parts: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Batch-function outputs (dicts of equal-length sequences) -> one dict of numpy columns, one cell per row: a
    column whose cells are arrays is a 1-D object array of them, even when they are equal-shaped (Ray Data then gives
    a 2-D array; batch consumers read either row by row)."""
    cols: dict[str, np.ndarray] = {}
    for k in parts[0]:
        values = [v for part in parts for v in part[k]]
        if isinstance(values[0], np.ndarray):
            cols[k] = np.empty(len(values), dtype=object)
            for i, v in enumerate(values):  # element-wise: equal-shaped arrays would otherwise broadcast into 2-D
                cols[k][i] = v
        else:
            cols[k] = np.asarray(values)
    return cols


def column_batches(cols: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Columns cut into consecutive batches of `size` rows (the last may be shorter), as Ray Data's `iter_batches`
    gives them."""
    n = len(next(iter(cols.values())))
    return ({k: v[i: i + size] for k, v in cols.items()} for i in range(0, n, size))


def length_grouped(
    batches: Iterator[dict[str, np.ndarray]], micro_batch_size: int, seed: int, group: bool = True
) -> Iterator[dict[str, np.ndarray]]:
    """Cut each large batch (a buffer of many micro-batches) into micro-batches of pairs of similar length.

    Sorting inside the buffer by pair length (the longer of chosen/rejected) means little compute goes to padding;
    the micro-batch order is then shuffled (seeded) so training does not see lengths in order. A group (pair or
    ranking) always stays together: it is one row. With group=False the buffer is cut in order.
    """
    rng = np.random.default_rng(seed)
    for big in batches:
        n = len(big["weight"])
        if group:
            if "lens" in big:
                lengths = np.asarray([int(np.max(x)) * len(x) for x in big["lens"]])  # padded tokens of the group
            else:
                lengths = np.asarray([len(x) for x in big["ids"]])
            order = np.argsort(lengths, kind="stable")
        else:
            order = np.arange(n)
        chunks = [order[i : i + micro_batch_size] for i in range(0, n, micro_batch_size)]
        if group:
            rng.shuffle(chunks)
        for idx in chunks:
            yield {k: v[idx] for k, v in big.items()}


def token_budget_batches(lengths: Sequence[int], token_budget: int, max_rows: int,
                         max_padding: float | None = None) -> list[np.ndarray]:
    """Indices of rows grouped into batches, longest first, each with rows * longest <= token_budget.

    Sorting by length means each padded batch (b, s) wastes little of b * s on padding. With `max_padding` a batch
    also ends before padding would pass that share of its b * s tokens (for devices where batching gains less than
    padding costs: a CPU). A row longer than the budget goes alone. Every index appears in exactly one batch.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(1, int(lengths[order[start]]))
        n = max(1, min(max_rows, token_budget // longest, len(order) - start))
        if max_padding is not None and n > 1:
            real = np.cumsum(lengths[order[start : start + n]])
            rows = np.arange(1, n + 1)
            fits = (rows * longest - real) <= max_padding * rows * longest
            n = int(np.argmin(fits)) if not fits.all() else n  # the first batch size that pads too much, minus one
            n = max(1, n)
        batches.append(order[start : start + n])
        start += n
    return batches


def pack_sequences(seqs: Sequence[Sequence[int]], pad_id: int, one_row: bool = False) -> dict[str, torch.Tensor]:
    """Sequences -> packed rows: several sequences per row, none split, first-fit in decreasing length.

    Rows hold up to the longest sequence's length, so no row is longer than the unpacked batch would be; `one_row`
    puts every sequence in a single row with no padding (the varlen kernel's layout). Returns
      input_ids, position_ids (r, L): positions restart at 0 for every sequence (transformers reads sequence
        boundaries from them) and for a row's tail padding, which so forms a segment of its own;
      last (n,): each sequence's last token as an index into the flattened (r * L) tokens, in input order;
      seq_len (n,): the sequences' lengths;
      cu_seq_lens (segments + 1,) int32: segment boundaries in the flattened tokens (sequences and tail paddings,
        row by row), as varlen attention kernels take them; max_length (): the longest segment.
    """
    lens = np.asarray([len(s) for s in seqs], dtype=np.int64)
    if len(lens) == 0:
        raise ValueError("pack_sequences needs at least one sequence")
    cap = int(lens.sum()) if one_row else int(lens.max())
    order = np.argsort(-lens, kind="stable")
    free = np.empty(0, dtype=np.int64)  # free tokens per open row
    members: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(free >= lens[i])
        if len(fits):
            r = int(fits[0])
        else:
            r, free = len(free), np.append(free, cap)
            members.append([])
        free[r] -= lens[i]
        members[r].append(int(i))
    width = cap if len(members) > 1 else int(lens.sum())
    ids = torch.full((len(members), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(members), width), dtype=torch.long)
    last = torch.empty(len(lens), dtype=torch.long)
    bounds = [0]
    for r, row in enumerate(members):
        at = 0
        for i in row:
            n = int(lens[i])
            ids[r, at : at + n] = torch.as_tensor(np.asarray(seqs[i], dtype=np.int64))
            pos[r, at : at + n] = torch.arange(n)
            last[i] = r * width + at + n - 1
            at += n
            bounds.append(r * width + at)
        if at < width:
            pos[r, at:] = torch.arange(width - at)
            bounds.append((r + 1) * width)
    cu = torch.tensor(bounds, dtype=torch.int32)
    return {"input_ids": ids, "position_ids": pos, "last": last, "seq_len": torch.as_tensor(lens),
            "cu_seq_lens": cu, "max_length": torch.tensor(int((cu[1:] - cu[:-1]).max()))}
