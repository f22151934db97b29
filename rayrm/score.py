"""Offline scoring of RL rollouts with Ray Data: read -> validate -> tokenise -> score -> write, plus best-of-N.

`run_scoring(cfg)` is the whole job. It streams (memory stays bounded whatever the input size):

1. read: one read task per JSONL file or Parquet row group, yielding blocks that carry each row's file and row number
   (so a bad row is named exactly); rows already scored by an earlier interrupted run are dropped here (resume);
2. tokenise: CPU tasks render the prompt/completion (or messages) and apply training's truncation policy;
3. score: a pool of `RewardScorer` actors; each sorts its block by length and cuts token-budget batches;
4. write: each block becomes one Parquet shard under `output/rewards/`, written to a temporary name and renamed, and
   named from its ids, so a retried task rewrites the same shard instead of adding a duplicate;
5. verify that every input row is in the output exactly once, then best-of-N per prompt id, then `_SUCCESS.json`.

A job that dies leaves no `_SUCCESS.json`; rerunning it with the same output scores only the rows that are missing.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrm.config import ScoreConfig
from rayrm.errors import InputNotFoundError, UserError
from rayrm.progress import Counter, say

SHARDS = "rewards"
BEST = "best_of_n"
SUCCESS = "_SUCCESS.json"
SRC, ROW = "_rayrm_file", "_rayrm_row"  # internal columns, dropped before writing
TMP_PREFIX = "_tmp-"


class BadRolloutError(UserError, ValueError):
    """A rollout row that cannot be scored; the message names the file, row and field."""


def log(msg: str) -> None:
    say(msg, "rayrm.score")


# ---------------------------------------------------------------- filesystem helpers
def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any URI pyarrow understands (s3://, gs://, hdfs://)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def list_input_files(spec: str) -> list[str]:
    """A file, a directory (recursive) or a glob -> sorted data file paths (as URIs when `spec` is one)."""
    fs, path = _fs(spec)
    scheme = spec.split("://", 1)[0] + "://" if "://" in spec else ""
    exts = (".parquet", ".jsonl", ".json")
    if any(ch in path for ch in "*?["):
        parts = path.split("/")
        first = next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))
        base = "/".join(parts[:first]) or "/"
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        found = [i.path for i in infos if i.type == pafs.FileType.File and _glob_match(i.path, path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputNotFoundError(f"input {spec!r} not found")
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            found = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(exts)
                     and not os.path.basename(i.path).startswith((".", "_"))]
        else:
            found = [path]
    if not found:
        raise InputNotFoundError(f"input {spec!r} matches no .parquet/.jsonl files")
    for f in found:
        if not f.endswith(exts):
            raise UserError(f"input file {f!r}: expected .parquet, .jsonl or .json")
    return sorted(scheme + f for f in found)


def _glob_match(path: str, pattern: str) -> bool:
    """Shell-style match where `*` stays inside one path segment (fnmatch alone lets it cross `/`)."""
    a, b = path.split("/"), pattern.split("/")
    return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))


@dataclass(frozen=True)
class ReadUnit:
    """One read task: a whole JSONL file, or one Parquet row group starting at row `offset` of its file."""

    path: str
    row_group: int = -1
    offset: int = 0


def plan_reads(files: list[str]) -> tuple[list[ReadUnit], int | None]:
    """Read units for the files and the total row count when it is known without reading (Parquet only)."""
    units, total = [], 0
    for f in files:
        if f.endswith(".parquet"):
            fs, p = _fs(f)
            with fs.open_input_file(p) as fh:
                md = pq.ParquetFile(fh).metadata
            offset = 0
            for g in range(md.num_row_groups):
                units.append(ReadUnit(f, g, offset))
                offset += md.row_group(g).num_rows
            total += md.num_rows
        else:
            units.append(ReadUnit(f))
            total = None if total is None else total
    has_jsonl = any(not u.path.endswith(".parquet") for u in units)
    return units, None if has_jsonl else total


def count_input_rows(files: list[str]) -> int:
    """Rows in all inputs: Parquet from metadata, JSONL by counting non-blank lines (one streaming pass)."""
    n = 0
    for f in files:
        fs, p = _fs(f)
        if f.endswith(".parquet"):
            with fs.open_input_file(p) as fh:
                n += pq.ParquetFile(fh).metadata.num_rows
        else:
            with fs.open_input_stream(p) as fh:
                n += sum(1 for line in _lines(fh) if line.strip())
    return n


def _lines(fh: Any) -> Iterator[bytes]:
    buf = b""
    while True:
        chunk = fh.read(1 << 20)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from lines
    if buf:
        yield buf


def id_hash(ids: Any) -> np.ndarray:
    """64-bit hashes of row ids (as strings): the resume bookkeeping, 8 bytes a row."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(x).encode(), digest_size=8).digest(), "little") for x in ids], dtype=np.uint64
    )


# ---------------------------------------------------------------- step 1: read + validate
def _fields(cfg: ScoreConfig) -> tuple[str, str, str, str, str]:
    return cfg.prompt_field, cfg.completion_field, cfg.messages_field, cfg.id_field, cfg.prompt_id_field


def _row_error(row: dict[str, Any], cfg: ScoreConfig, need_pid: bool) -> str | None:
    """Why a rollout cannot be scored (naming the field), or None."""
    pf, cf, mf, idf, pidf = _fields(cfg)
    if mf in row and row[mf] is not None and not (pf in row or cf in row):
        msgs = row[mf]
        if not isinstance(msgs, list) or len(msgs) < 2:
            return f"field '{mf}' must be a list of at least two messages (prompt turns, then the assistant reply)"
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                return f"field '{mf}[{j}]' must be a {{'role': str, 'content': str}} message"
        if msgs[-1]["role"] != "assistant":
            return f"field '{mf}': the last message must be the assistant's completion, got role {msgs[-1]['role']!r}"
    else:
        for name in (pf, cf):
            v = row.get(name)
            if v is None:
                return f"field '{name}' is missing or null"
            if not isinstance(v, (str, list)):
                return f"field '{name}' must be a string or a message list, got {type(v).__name__}"
    if idf in row and row[idf] is None:
        return f"field '{idf}' is null"
    if need_pid and row.get(pidf) is None:
        return f"field '{pidf}' is missing or null (best-of-N is on)"
    return None


def _finish_rows(rows: list[dict[str, Any]], locs: list[tuple[str, int]], cfg: ScoreConfig, rel: str,
                 need_pid: bool, done: np.ndarray | None) -> pa.Table | None:
    """Validate, derive ids, drop rows scored by an earlier run; -> Arrow table with SRC/ROW/error columns."""
    idf = cfg.id_field
    errors: list[str | None] = []
    for row, (path, i) in zip(rows, locs):
        if row.get("_rayrm_bad") is not None:
            err = row.pop("_rayrm_bad")
        else:
            err = _row_error(row, cfg, need_pid)
        if err is not None and cfg.on_bad_row == "error":
            raise BadRolloutError(f"{path}:row {i}: {err} (set on_bad_row=mark to keep going and flag such rows)")
        errors.append(err)
        if err is not None:  # keep the row, but a text field of the wrong type cannot share its Arrow column
            for f in _fields(cfg)[:3]:
                if f in row and row[f] is not None and not isinstance(row[f], (str, list)):
                    errors[-1] = f"{err} (value {row[f]!r})"
                    row[f] = None
        if idf not in row:
            row[idf] = f"{rel}:{i}"
    keep = np.ones(len(rows), dtype=bool)
    if done is not None and len(done):
        keep = ~np.isin(id_hash([r[idf] for r in rows]), done)
    if not keep.any():
        return None
    sel = np.flatnonzero(keep)
    rows = [rows[i] for i in sel]
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise BadRolloutError(f"{locs[sel[0]][0]}: rows {locs[sel[0]][1]}-{locs[sel[-1]][1]} have columns of mixed types ({e})") from None
    table = table.append_column(SRC, pa.array([locs[i][0] for i in sel], pa.string()))
    table = table.append_column(ROW, pa.array([locs[i][1] for i in sel], pa.int64()))
    return table.append_column("error", pa.array([errors[i] for i in sel], pa.string()))


def read_unit(batch: dict[str, np.ndarray], cfg: ScoreConfig, need_pid: bool, base: str,
              done_ref: Any) -> Iterator[pa.Table]:
    """Ray Data generator UDF: one ReadUnit in, blocks of validated rows out."""
    import ray

    done = ray.get(done_ref) if done_ref is not None else None
    for path, group, offset in zip(batch["path"], batch["row_group"], batch["offset"]):
        path, group, offset = str(path), int(group), int(offset)
        rel = os.path.relpath(path, base) if base else path
        fs, p = _fs(path)
        n = cfg.block_rows
        if path.endswith(".parquet"):
            with fs.open_input_file(p) as fh:
                t = pq.ParquetFile(fh).read_row_group(group)
            for start in range(0, t.num_rows, n):
                rows = t.slice(start, n).to_pylist()
                out = _finish_rows(rows, [(path, offset + start + k) for k in range(len(rows))], cfg, rel, need_pid, done)
                if out is not None:
                    yield out
            continue
        rows, locs = [], []
        with fs.open_input_stream(p) as fh:
            for lineno, line in enumerate(_lines(fh), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        row = {"_rayrm_bad": f"line is JSON {type(row).__name__}, not an object"}
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    row = {"_rayrm_bad": f"undecodable line ({e})"}
                rows.append(row)
                locs.append((path, lineno))
                if len(rows) == n:
                    out = _finish_rows(rows, locs, cfg, rel, need_pid, done)
                    if out is not None:
                        yield out
                    rows, locs = [], []
        if rows:
            out = _finish_rows(rows, locs, cfg, rel, need_pid, done)
            if out is not None:
                yield out


# ---------------------------------------------------------------- step 2: tokenise (CPU tasks)
@functools.lru_cache(maxsize=2)
def _tokenizer_for(model_dir: str) -> Any:
    """One tokenizer (with the export's meta and layout) per task worker process, re-used across tasks."""
    from rayrm.data import special_layout
    from rayrm.model import load_tokenizer, read_meta

    tok = load_tokenizer(model_dir)
    tok.model_max_length = 10**9
    meta = read_meta(model_dir)
    return tok, meta, special_layout(tok, meta.get("append_eos", True))


def tokenize_block(t: pa.Table, cfg: ScoreConfig) -> pa.Table:
    """Add `input_ids` (list<int32>, empty for bad rows), `num_tokens`, `truncated` and, for outcome/process RMs,
    `marks` (the token positions whose probabilities are read)."""
    from rayrm.infer import encode_rollouts

    tok, meta, layout = _tokenizer_for(cfg.model)
    pf, cf, mf, _, _ = _fields(cfg)
    ok = pc.is_null(t["error"]).to_numpy(zero_copy_only=False)
    cols = set(t.column_names)
    use_pc = pf in cols or cf in cols
    prompts = t[pf].to_pylist() if use_pc else None
    comps = t[cf].to_pylist() if use_pc else None
    msgs = t[mf].to_pylist() if mf in cols else None
    p_txt, c_txt, idx = [], [], np.flatnonzero(ok)
    for i in idx:
        if use_pc and prompts[i] is not None:
            p, c = prompts[i], comps[i]
        else:
            p, c = msgs[i][:-1], msgs[i][-1:]
        p_txt.append(p)
        c_txt.append(c)
    enc = encode_rollouts(tok, meta, layout, p_txt, c_txt)
    all_ids: list[list[int]] = [[] for _ in range(t.num_rows)]
    marks: list[list[int]] = [[] for _ in range(t.num_rows)]
    truncated = np.zeros(t.num_rows, dtype=bool)
    for k, i in enumerate(idx):
        all_ids[i] = enc.ids[k]
        truncated[i] = enc.truncated[k]
        if enc.marks is not None:
            marks[i] = enc.marks[k]
    if enc.marks is not None:
        t = t.append_column("marks", pa.array(marks, pa.list_(pa.int32())))
    t = t.append_column("input_ids", pa.array(all_ids, pa.list_(pa.int32())))
    t = t.append_column("num_tokens", pa.array([len(x) for x in all_ids], pa.int32()))
    return t.append_column("truncated", pa.array(truncated))


# ---------------------------------------------------------------- step 3: score (actor pool)
class ScoreActor:
    """Ray Data callable class: one `RewardScorer` per actor; a block in, the block with rewards out."""

    def __init__(self, model_dir: str, dtype: str, token_budget: int, max_batch_rows: int, torch_threads: int | None,
                 packing: str = "auto"):
        from rayrm.infer import RewardScorer

        self.scorer = RewardScorer(model_dir, dtype=dtype, token_budget=token_budget,
                                   max_batch_rows=max_batch_rows, torch_threads=torch_threads, packing=packing)

    def __call__(self, t: pa.Table) -> pa.Table:
        ok = pc.is_null(t["error"]).to_numpy(zero_copy_only=False)
        ids_col = t["input_ids"].combine_chunks()
        offsets = ids_col.offsets.to_numpy()
        values = ids_col.values.to_numpy()
        idx = np.flatnonzero(ok)
        seqs = [values[offsets[i] : offsets[i + 1]] for i in idx]
        marks = [t["marks"][int(i)].as_py() for i in idx] if "marks" in t.column_names else None
        r, details = self.scorer.score_ids_detailed(seqs, marks)
        reward = np.full(t.num_rows, np.nan, dtype=np.float32)
        reward[idx] = r
        mask = ~ok
        t = t.drop_columns([c for c in ("input_ids", "marks") if c in t.column_names])
        if details is not None:  # ORM: per-token, PRM: per-step probabilities; `reward` is their aggregate
            col: list[list[float] | None] = [None] * t.num_rows
            for k, i in enumerate(idx):
                col[i] = details[k].tolist()
            name = "token_scores" if self.scorer.task == "orm" else "step_scores"
            t = t.append_column(name, pa.array(col, pa.list_(pa.float32())))
        t = t.append_column("reward", pa.array(reward, pa.float32(), mask=mask))
        t = t.append_column("reward_normalized", pa.array(self.scorer.normalize(reward), pa.float32(), mask=mask))
        return t.append_column("model", pa.array([self.scorer.model_id] * t.num_rows, pa.string()))


# ---------------------------------------------------------------- step 4: write shards atomically
def write_shard(t: pa.Table, output: str, id_field: str, before_write: Callable[[str], None] | None = None) -> pa.Table:
    """Write one block as `rewards/part-<hash of its ids>.parquet` (tmp name, then rename); return its counts.

    `before_write(output)` runs in the writing task before each shard is written (`run_scoring`'s hook; tests use it
    to kill the driver mid-job).
    """
    fs, out = _fs(output)
    shard_dir = _join(out, SHARDS)
    digest = hashlib.blake2b("\n".join(map(str, t[id_field].to_pylist())).encode(), digest_size=12).hexdigest()
    name = f"part-{digest}.parquet"
    tmp = _join(shard_dir, f"{TMP_PREFIX}{uuid.uuid4().hex}-{name}")
    data = t.drop_columns([SRC, ROW])
    if before_write is not None:
        before_write(output)
    with fs.open_output_stream(tmp) as fh:
        pq.write_table(data, fh)
    fs.move(tmp, _join(shard_dir, name))
    ok = pc.is_null(t["error"])
    return pa.table({
        "shard": [name],
        "rows": [t.num_rows],
        "tokens": [int(pc.sum(t["num_tokens"]).as_py() or 0)],
        "truncated": [int(pc.sum(pc.cast(t["truncated"], pa.int64())).as_py() or 0)],
        "bad": [int(t.num_rows - pc.sum(pc.cast(ok, pa.int64())).as_py())],
    })


# ---------------------------------------------------------------- step 5: verify + best-of-N
def shard_files(output: str) -> list[str]:
    fs, out = _fs(output)
    infos = fs.get_file_info(pafs.FileSelector(_join(out, SHARDS), allow_not_found=True))
    scheme = output.split("://", 1)[0] + "://" if "://" in output else ""
    return sorted(scheme + i.path for i in infos if os.path.basename(i.path).startswith("part-"))


def read_done_ids(output: str, id_field: str) -> np.ndarray:
    """Hashes of the ids already written (complete shards only; half-written ones still have their tmp name)."""
    files = shard_files(output)
    if not files:
        return np.zeros(0, dtype=np.uint64)
    return np.concatenate([id_hash(_read_shard(f, [id_field])[id_field].to_pylist()) for f in files])


def _read_shard(path: str, columns: list[str]) -> pa.Table:
    """Some columns of one output shard (local or remote)."""
    fs, p = _fs(path)
    with fs.open_input_file(p) as fh:
        return pq.read_table(fh, columns=columns)


def best_of_n_block(df: Any, top_k: int, pid: str, idf: str, extra: list[str], temperature: float | None = None) -> Any:
    """pandas block of (prompt_id, id, reward, ...) -> one row per prompt id: argmax (highest reward, then the
    smallest id as the deterministic tie-break), its reward, N, spread (max - min) and optionally the top k.

    With `temperature` T (a scalar RM's calibration, rayrm.json), also calibrated Bradley-Terry probabilities:
    `p_best` = P(the best is preferred to every other completion, Plackett-Luce first place)
    = exp(r_best / T) / sum_i exp(r_i / T), and `p_over_runner_up` = sigmoid((r_best - r_second) / T) (NaN at N = 1).
    """
    import pandas as pd

    df = df[df["reward"].notna()]
    if df.empty:
        return pd.DataFrame()
    df = df.assign(_id_key=df[idf].astype(str)).sort_values([pid, "reward", "_id_key"], ascending=[True, False, True], kind="stable").reset_index(drop=True)
    g = df.groupby(pid, sort=False)
    best = g.head(1).set_index(pid)
    out = pd.DataFrame({
        pid: best.index,
        "best_id": best[idf].to_numpy(),
        "best_reward": best["reward"].to_numpy(),
        "n": g.size().reindex(best.index).to_numpy(),
        "spread": (g["reward"].max() - g["reward"].min()).reindex(best.index).to_numpy(),
    })
    if temperature is not None:
        import torch

        from rayrm.metrics import preference_probability

        z = (df["reward"].astype(np.float64) - df.groupby(pid, sort=False)["reward"].transform("max")) / temperature
        denom = np.exp(z).groupby(df[pid], sort=False).sum().reindex(best.index).to_numpy()
        out["p_best"] = 1.0 / denom
        second = g["reward"].nth(1)
        second = pd.Series(second.to_numpy(), index=df.loc[second.index, pid].to_numpy()).reindex(best.index)
        out["p_over_runner_up"] = preference_probability(
            torch.from_numpy(best["reward"].to_numpy(np.float64)), torch.from_numpy(second.to_numpy(np.float64)),
            temperature).numpy()
    for col in extra:
        out["best_" + col] = best[col].to_numpy()
    if top_k > 1:
        top = g.head(top_k).groupby(pid, sort=False)
        out["top_ids"] = top[idf].apply(list).reindex(best.index).to_numpy()
        out["top_rewards"] = top["reward"].apply(list).reindex(best.index).to_numpy()
    return out


# ---------------------------------------------------------------- the job
FEED_CPUS = 1.0  # the widest task feeding the actors: Ray Data's streaming repartition asks for one CPU


def check_cpu_room(cfg: ScoreConfig, cluster_cpus: float) -> None:
    """The actor pool must leave CPU for the tasks that feed it (read, repartition, tokenise): actors holding the
    cluster's CPUs would wait forever for batches no task can make. Raises a ConfigError naming what to change."""
    from rayrm.config import ConfigError

    pool = cfg.num_actors * cfg.cpus_per_actor
    feed = max(FEED_CPUS, cfg.tokenize_cpus, cfg.read_cpus)
    if pool + feed > cluster_cpus + 1e-9:
        raise ConfigError(
            f"num_actors x cpus_per_actor = {cfg.num_actors} x {cfg.cpus_per_actor:g} CPUs leaves "
            f"{max(0.0, cluster_cpus - pool):g} of the cluster's {cluster_cpus:g} CPUs for the tasks that feed the "
            f"actors, which need {feed:g}: lower cpus_per_actor or num_actors "
            f"(e.g. cpus_per_actor={max(0.25, (cluster_cpus - feed) / cfg.num_actors):g})")


def run_scoring(cfg: ScoreConfig, before_write: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score every input rollout exactly once into `cfg.output`; returns the summary (also in _SUCCESS.json).

    `before_write(output)`, when given, runs in the writing task before each shard is written (it is pickled to
    the Ray workers): a place to observe or interrupt the job between shards."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init()
    check_cpu_room(cfg, float(ray.cluster_resources().get("CPU", 0.0)))
    # tasks and actors get the typed config, with the export's path absolute (they run in another directory)
    c = cfg.model_copy(update={"model": os.path.abspath(cfg.model) if os.path.exists(cfg.model) else cfg.model})
    from rayrm.model import read_meta, resolve_model_path

    c.model = resolve_model_path(c.model)
    meta = read_meta(c.model)  # fail now, on the driver, when the export is missing
    fs, out = _fs(cfg.output)
    fs.create_dir(_join(out, SHARDS), recursive=True)

    # 1. inputs, best-of-N mode, and what an earlier run already wrote
    files = list_input_files(cfg.input)
    units, _ = plan_reads(files)
    # derived ids are "<path relative to the inputs' common folder>:<row>": stable across reruns of one input spec
    base = os.path.commonpath([os.path.dirname(f) for f in files]) if "://" not in files[0] else ""
    pidf = cfg.prompt_id_field
    has_pid = _has_column(files[0], pidf)
    need_pid = cfg.best_of_n == "on" or (cfg.best_of_n == "auto" and has_pid)
    if cfg.best_of_n == "on" and not has_pid:
        raise BadRolloutError(f"{files[0]}: no '{pidf}' column, but best_of_n=on")
    for marker in (SUCCESS,):
        if fs.get_file_info(_join(out, marker)).type != pafs.FileType.NotFound:
            fs.delete_file(_join(out, marker))  # about to change the output: it is not complete until we say so
    _remove_tmp(fs, _join(out, SHARDS))
    done = read_done_ids(cfg.output, cfg.id_field)
    if len(done):
        log(f"resuming: {len(done)} rows already scored in {len(shard_files(cfg.output))} shards; scoring the rest")
    done_ref = ray.put(np.sort(done)) if len(done) else None
    n_input = count_input_rows(files) if not cfg.max_rows else min(cfg.max_rows, count_input_rows(files))

    # 2. the streaming pipeline
    # Bounded memory over millions of rows: task workers are recycled every task_max_calls blocks, and the stages'
    # workers run with fewer glibc arenas (docs/benchmarks.md, scoring at scale).
    env = {"env_vars": {"MALLOC_ARENA_MAX": str(cfg.malloc_arena_max)}} if cfg.malloc_arena_max else None
    task_args = {"max_calls": cfg.task_max_calls, "runtime_env": env}
    units_ds = ray.data.from_items([{"path": u.path, "row_group": u.row_group, "offset": u.offset} for u in units],
                                   override_num_blocks=len(units))
    ds = units_ds.map_batches(read_unit, batch_size=1, fn_kwargs={"cfg": c, "need_pid": need_pid, "base": base,
                              "done_ref": done_ref}, num_cpus=cfg.read_cpus, **task_args)
    if cfg.max_rows:
        ds = ds.limit(cfg.max_rows)
    # Blocks of at most block_rows rows from here on. A read task's output would otherwise stay one block however
    # many rows it yields (one JSONL file or row group: a single scoring call, no progress until it ends, one actor
    # busy while the others wait).
    ds = ds.repartition(target_num_rows_per_block=cfg.block_rows)
    # batch_size=None: one tokenise task per block. A row-count batch_size would let Ray Data, which fuses stages
    # with equal resources, bundle many read units into one task that reads and tokenises the whole input while the
    # other cores idle; read_cpus != tokenize_cpus keeps the stages unfused as well.
    ds = ds.map_batches(tokenize_block, batch_format="pyarrow", batch_size=None, fn_kwargs={"cfg": c},
                        num_cpus=cfg.tokenize_cpus, **task_args)
    threads = cfg.torch_threads or max(1, int(np.ceil(cfg.cpus_per_actor)))
    ds = ds.map_batches(
        ScoreActor, batch_format="pyarrow", batch_size=cfg.block_rows,
        fn_constructor_kwargs={"model_dir": c.model, "dtype": cfg.dtype, "token_budget": cfg.token_budget,
                               "max_batch_rows": cfg.max_batch_rows, "torch_threads": threads,
                               "packing": cfg.packing},
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor or None, runtime_env=env,
    )
    ds = ds.map_batches(write_shard, batch_format="pyarrow", batch_size=cfg.block_rows,  # one shard per block_rows
                        fn_kwargs={"output": cfg.output, "id_field": cfg.id_field,
                                   "before_write": before_write},
                        num_cpus=0.25)

    # 3. drive it: a progress line (rows, rate, ETA) as scored blocks are written, at most every 10 s
    t0 = time.time()
    tot = {"rows": 0, "tokens": 0, "truncated": 0, "bad": 0, "shards": 0}
    progress = Counter("scored", "rows", max(0, n_input - len(done)), prefix="rayrm.score")
    log(f"scoring {progress.total:,} rows of {len(files)} file(s) with {cfg.num_actors} actor(s) -> {cfg.output}")
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        counts = {k: int(pc.sum(b[k]).as_py() or 0) for k in ("rows", "tokens", "truncated", "bad")}
        for k, v in counts.items():
            tot[k] += v
        tot["shards"] += b.num_rows
        progress.add(counts["rows"])
    wall = time.time() - t0
    progress.add(0, force=True)

    # 4. exactly once: every input row in the output, none twice
    all_ids = read_done_ids(cfg.output, cfg.id_field)
    n_unique = int(np.unique(all_ids).size)
    if n_unique != all_ids.size:
        raise RuntimeError(f"{cfg.output}: {all_ids.size - n_unique} rows appear twice (duplicate '{cfg.id_field}' values in the input?)")
    if all_ids.size != n_input:
        raise RuntimeError(f"{cfg.output}: {all_ids.size} rows scored but the input has {n_input}; rerun to finish")

    # 5. best-of-N over all shards (including those of earlier runs)
    summary: dict[str, Any] = {
        "model": c.model, "input": cfg.input, "output": cfg.output, "input_rows": n_input,
        "rows_scored_this_run": tot["rows"], "rows_resumed": int(len(done)), "tokens": tot["tokens"],
        "truncated_rows": tot["truncated"], "bad_rows": tot["bad"], "wall_s": wall,
        "rows_per_s": tot["rows"] / max(wall, 1e-9), "tokens_per_s": tot["tokens"] / max(wall, 1e-9),
    }
    if need_pid:
        summary["best_of_n_prompts"] = _write_best_of_n(cfg, meta)
    summary["bad_rows_total"] = _count_bad(cfg.output)
    with fs.open_output_stream(_join(out, SUCCESS)) as fh:
        fh.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


def _write_best_of_n(cfg: ScoreConfig, meta: dict[str, Any]) -> int:
    """best_of_n/ from the shards: a few small columns per row, not a shuffle of whole rows.

    Rows of (prompt_id, id, reward) are read shard by shard in the driver, in passes over the prompt ids' hash
    (`best_of_n_rows_per_pass` rows at most per pass, so memory stays bounded whatever the input size); each pass
    ranks its prompts (`best_of_n_block`), then reads only the winners' completions and writes one part file.
    A Ray Data shuffle of whole rows would move every column and set the job's peak memory.
    """
    temperature = float(meta.get("temperature") or 1.0) if meta.get("task", "reward") == "reward" else None
    fs, out = _fs(cfg.output)
    best_dir = _join(out, BEST)
    if fs.get_file_info(best_dir).type != pafs.FileType.NotFound:
        fs.delete_dir(best_dir)
    fs.create_dir(best_dir, recursive=True)
    pidf, idf, cf = cfg.prompt_id_field, cfg.id_field, cfg.completion_field
    files = shard_files(cfg.output)
    has_completion = _has_column(files[0], cf)
    passes = max(1, -(-count_input_rows(files) // cfg.best_of_n_rows_per_pass))  # row counts from the footers
    total = 0
    for k in range(passes):
        parts = []
        for f in files:
            t = _read_shard(f, [pidf, idf, "reward"])
            if passes > 1:
                t = t.filter(pa.array(id_hash(t[pidf].to_pylist()) % np.uint64(passes) == k))
            parts.append(t)
        best = best_of_n_block(pa.concat_tables(parts).to_pandas(), cfg.top_k, pidf, idf, [], temperature)
        del parts
        if best.empty:
            continue
        if has_completion:  # the winners' completions only: one pass over the shards, filtered by id
            winners = pa.array(best["best_id"].tolist())
            found: dict[Any, Any] = {}
            for f in files:
                t = _read_shard(f, [idf, cf])
                t = t.filter(pc.is_in(t[idf], value_set=winners.cast(t[idf].type)))
                found.update(zip(t[idf].to_pylist(), t[cf].to_pylist()))
            best["best_" + cf] = [found[i] for i in best["best_id"]]
        name = _join(best_dir, f"part-{k:05d}.parquet")
        with fs.open_output_stream(name + ".tmp") as fh:
            pq.write_table(pa.Table.from_pandas(best, preserve_index=False), fh)
        fs.move(name + ".tmp", name)
        total += len(best)
    return total


def _count_bad(output: str) -> int:
    """Rows flagged with an `error` (on_bad_row=mark) across all shards."""
    n = 0
    for f in shard_files(output):
        col = _read_shard(f, ["error"])["error"]
        n += len(col) - col.null_count
    return n


def _has_column(path: str, name: str) -> bool:
    fs, p = _fs(path)
    if path.endswith(".parquet"):
        with fs.open_input_file(p) as fh:
            return name in pq.ParquetFile(fh).schema_arrow.names
    with fs.open_input_stream(p) as fh:
        for line in _lines(fh):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                return isinstance(row, dict) and name in row
    return False


def _remove_tmp(fs: pafs.FileSystem, shard_dir: str) -> None:
    """Half-written shards of a killed run still carry the tmp prefix: delete them."""
    for i in fs.get_file_info(pafs.FileSelector(shard_dir, allow_not_found=True)):
        if os.path.basename(i.path).startswith(TMP_PREFIX):
            fs.delete_file(i.path)
