"""Live reward serving with Ray Serve: one batched reward-model deployment behind a FastAPI ingress.

    serve run configs/serve/reward.yaml                                       # Serve config file (import_path + args)
    python jobs/serve.py --config configs/serve/default.yaml model=/ckpt/final

`RewardServer` loads an export once per replica with `rayrm.infer.RewardScorer`, the same tokenise/score path as
offline scoring, so a served reward equals `jobs/score.py`'s reward for the same row. Routes:

    POST /v1/rewards   {"prompts": [...], "completions": [...], "groups": [...]?}  (strings or message lists)
                       -> {"rewards": raw, "normalized": (r - mean) / std with the training stats,
                           "whitened": within each group (zero-std guard) or null, "truncated": [...], "model": ...}
    POST /v1/preferences {"prompts": [...], "completions_a": [...], "completions_b": [...]}
                       -> {"p_a_better": calibrated sigmoid((r_a - r_b) / T), T from rayrm.json, "rewards_a", ...}
    POST /get_reward   OpenRLHF's remote reward protocol: {"query": [texts], "prompts"?, "labels"?}
                       -> {"rewards", "scores", "extra_logs"}
    POST /classify     vLLM's pooling API (verl's reward loop): {"input": text | [texts] | "messages": chat,
                       "use_activation": false} -> {"id": "classify-...", "data": [{"probs": [reward]}], "usage"}
    POST /pooling      vLLM's pooling API: task classify, or token_classify (outcome/process RMs: per-token or per-step
                       probabilities)
    GET  /v1/models    vLLM's/OpenAI's model list
    GET  /v1/model     checkpoint metadata (rayrm.json), serving settings, this replica's counters
    GET  /healthz      liveness; the only route open without the bearer token
    GET  /docs, /openapi.json

Batching: a request's rows are tokenised on arrival and enter one `@serve.batch` queue row by row, so rows from
many requests (one rollout each, or a GRPO group each) share a forward. A batch closes at `max_batch_size` rows, at
`token_budget` tokens, or `batch_wait_timeout_s` after its first row; `RewardScorer` sorts it by length and cuts
forwards of at most `token_budget` padded tokens. A reward does not depend on which rows share its batch.
Outcome/process RM exports (rayrm.json `task` orm/prm) answer their aggregate probability as the reward, and their
per-token/per-step probabilities on request (/v1/rewards `return_probs`, /pooling `token_classify`).

A text without a prompt/completion split (/get_reward, /classify, /pooling) is scored as training scores prompt "" +
completion: over max_length it loses tokens from its start, and the end, where the reward is read, survives.

Ray actors call the deployment through a handle (`handle.score.remote(body)`), with the same validation and batching
and no HTTP; `rayrm.client.RewardClient` wraps both ways.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.requests import Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from rayrm.config import ServeConfig, build_config
from rayrm.protocol import (
    BadRequest,
    ClassificationData,
    ClassificationResponse,
    ClassifyRequest,
    ModelCard,
    ModelInfo,
    ModelList,
    PoolingRequest,
    PoolingResponse,
    PoolingResponseData,
    UsageInfo,
    OpenRLHFRequest,
    OpenRLHFResponse,
    PreferenceRequest,
    PreferenceResponse,
    RewardRequest,
    RewardResponse,
    bad_field,
    check_limits,
    parse,
    vllm_error,
)

OPEN_PATHS = ("/healthz",)  # routes that never need the bearer token
VLLM_PATHS = ("/classify", "/pooling", "/v1/models")  # errors in vLLM's body and status codes


INLINE_TOKENIZE_CHARS = 8192  # requests up to this many characters tokenise on the event loop


def _chars(text: Any) -> int:
    return len(text) if isinstance(text, str) else sum(len(m.get("content", "")) for m in text)


def _plain(texts: list[Any]) -> list[Any]:
    """Message models back to the dicts `render_completion` and chat templates expect."""
    return [t if isinstance(t, str) else [m.model_dump() for m in t] for t in texts]


def whiten_groups(rewards: np.ndarray, groups: Sequence[int | str]) -> np.ndarray:
    """(n,) rewards -> (n,) whitened within each group id with `rayrm.metrics.whiten` (std 0 -> all 0)."""
    import torch

    from rayrm.metrics import whiten

    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = np.empty(len(rewards), dtype=np.float32)
    for idx in members.values():
        out[idx] = whiten(torch.from_numpy(np.asarray(rewards, dtype=np.float32)[idx])).numpy()
    return out


# ---------------------------------------------------------------- batching
@dataclass
class _Row:
    """One tokenised row in the batch queue. `slots`: its share of a batch, max(1 row, tokens / tokens-per-row);
    `marks`: the positions an outcome/process RM reads (None for a scalar RM)."""

    ids: list[int]
    slots: float
    marks: list[int] | None = None


def _queue_rows(seqs: list[list[int]], marks: list[list[int]] | None, token_budget: int,
                max_batch_size: int) -> list[_Row]:
    """Tokenised rows -> batch-queue rows: each takes max(1, tokens / (token_budget / max_batch_size)) slots, at
    most a whole batch (a row longer than the budget still runs, alone)."""
    per_row = token_budget / max_batch_size
    return [_Row(s, min(max(1.0, len(s) / per_row), max_batch_size), None if marks is None else marks[i])
            for i, s in enumerate(seqs)]


def _batch_slots(rows: list[_Row]) -> int:
    """Size of a candidate batch for `@serve.batch`, in rows: the row count, or the tokens expressed in rows of
    `token_budget / max_batch_size` tokens when they bind first. Capped at max_batch_size == capped at both."""
    return max(len(rows), math.ceil(sum(r.slots for r in rows) - 1e-9))


# ---------------------------------------------------------------- the deployment
@serve.deployment
@serve.ingress()  # the FastAPI app is built per replica (`__serve_build_asgi_app__`) from this replica's settings
class RewardServer:
    """A reward model per replica; HTTP and handle requests share validation, batching and scoring."""

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "fp32",
        torch_threads: int | None = None,
        batching: bool = True,
        max_batch_size: int = 64,
        batch_wait_timeout_s: float = 0.01,
        token_budget: int = 16384,
        max_items: int = 256,
        max_text_chars: int = 32768,
        auth_token_env: str | None = None,
        openrlhf_normalized: bool = False,
        gil_switch_interval_s: float | None = None,
        max_body_bytes: int = 16 * 2**20,
        served_model_name: str | None = None,
        packing: str = "auto",
    ) -> None:
        import torch

        from rayrm.infer import RewardScorer

        if gil_switch_interval_s is not None:
            # The forward runs in a worker thread. On a GPU its Python dispatch takes and drops the GIL around every
            # op, and the event loop, waking from I/O, then waits up to this interval (Python's default: 5 ms) for
            # the GIL each time: a convoy that caps the requests a GPU replica accepts per second. Shorter = the loop
            # accepts and tokenises requests while a batch runs, so batches fill.
            sys.setswitchinterval(gil_switch_interval_s)

        self.scorer = RewardScorer(model, dtype=dtype, token_budget=token_budget, max_batch_rows=max_batch_size,
                                   torch_threads=torch_threads, packing=packing)
        self.token = _read_token(auth_token_env)
        self.batching = batching
        self.max_batch_size = max_batch_size
        self.token_budget = token_budget
        self.max_items, self.max_text_chars = max_items, max_text_chars
        self.openrlhf_normalized = openrlhf_normalized
        self.max_body_bytes = max_body_bytes
        self.served_model_name = served_model_name
        id2label = getattr(self.scorer.model.config, "id2label", None) or {}
        self.label = str(id2label.get(0, "LABEL_0"))
        self.settings = {"batching": batching, "max_batch_size": max_batch_size, "token_budget": token_budget,
                         "batch_wait_timeout_s": batch_wait_timeout_s, "max_items": max_items,
                         "max_text_chars": max_text_chars, "max_body_bytes": max_body_bytes,
                         "auth": self.token is not None,
                         "dtype": self.scorer.dtype, "torch_threads": torch.get_num_threads(),
                         "served_model_name": served_model_name,
                         "gil_switch_interval_s": sys.getswitchinterval()}
        self.rows_scored = self.batches = 0
        self._one_at_a_time = asyncio.Lock()
        # @serve.batch takes its sizes at class definition; the config sets them per replica here.
        self._score_rows.set_max_batch_size(max_batch_size)
        self._score_rows.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self, self.token, self.max_body_bytes)

    # ---- entry points (HTTP routes call these; handles call `score` / `get_reward` directly)
    async def score(self, body: RewardRequest | dict[str, Any]) -> RewardResponse:
        """Rows -> raw, normalised and (with groups) whitened rewards. Raises BadRequest on invalid input."""
        req: RewardRequest = parse(RewardRequest, body)
        check_limits({"prompts": req.prompts, "completions": req.completions}, self.max_items, self.max_text_chars)
        if req.return_probs and self.scorer.task == "reward":
            raise bad_field("return_probs", "per-token/per-step probabilities come from outcome or process RM "
                                            "exports; this export is a scalar reward model")
        tok = await self._tokenize(_plain(req.prompts), _plain(req.completions))
        raw, probs = await self._rewards(tok.ids, tok.marks)
        return RewardResponse(
            rewards=raw.tolist(), normalized=self.scorer.normalize(raw).tolist(),
            whitened=None if req.groups is None else whiten_groups(raw, req.groups).tolist(),
            truncated=tok.truncated, model=self.scorer.model_id,
            probs=[p.tolist() for p in probs] if req.return_probs and probs is not None else None,
        )

    async def prefer(self, body: PreferenceRequest | dict[str, Any]) -> PreferenceResponse:
        """Rows of (prompt, a, b) -> calibrated P(a better than b). Raises BadRequest on invalid input or an
        outcome/process RM export (its reward is already a probability of being correct, not a BT score)."""
        req: PreferenceRequest = parse(PreferenceRequest, body)
        if self.scorer.task != "reward":
            raise BadRequest([{"loc": ["body"], "type": "value_error",
                               "msg": f"preferences need a scalar reward model; this export's task is "
                                      f"{self.scorer.task!r} (use /v1/rewards)"}])
        check_limits({"prompts": req.prompts, "completions_a": req.completions_a,
                      "completions_b": req.completions_b}, self.max_items, self.max_text_chars)
        n = len(req.prompts)
        prompts = _plain(req.prompts)
        tok = await self._tokenize(prompts + prompts, _plain(req.completions_a) + _plain(req.completions_b))
        raw, _ = await self._rewards(tok.ids, tok.marks)
        r_a, r_b = raw[:n], raw[n:]
        return PreferenceResponse(p_a_better=self.scorer.preference_probability(r_a, r_b).tolist(),
                                  rewards_a=r_a.tolist(), rewards_b=r_b.tolist(),
                                  temperature=self.scorer.temperature, model=self.scorer.model_id)

    async def get_reward(self, body: OpenRLHFRequest | dict[str, Any]) -> OpenRLHFResponse:
        """OpenRLHF protocol. A query has no prompt split, so it is scored as prompt "" + completion = the whole
        text: over max_length it loses tokens from its start, and the end, where the reward is read, survives."""
        req: OpenRLHFRequest = parse(OpenRLHFRequest, body)
        check_limits({"query": req.query}, self.max_items, self.max_text_chars)
        tok = await self._tokenize([""] * len(req.query), req.query)
        raw, _ = await self._rewards(tok.ids, tok.marks)
        r = (self.scorer.normalize(raw) if self.openrlhf_normalized else raw).tolist()
        return OpenRLHFResponse(rewards=r, scores=r, extra_logs={"truncated": [float(t) for t in tok.truncated]})

    async def classify(self, body: ClassifyRequest | dict[str, Any]) -> ClassificationResponse:
        """vLLM's /classify: per text, probs = [reward] (raw with use_activation false, else its sigmoid; an
        outcome/process RM answers its aggregate probability either way)."""
        req: ClassifyRequest = parse(ClassifyRequest, body)
        raw, _, n_tokens = await self._score_whole(req, want_probs=False)
        probs = self._activate(raw, req.activated())
        return ClassificationResponse(
            model=self._name(), usage=UsageInfo(prompt_tokens=n_tokens, total_tokens=n_tokens),
            data=[ClassificationData(index=i, label=self.label, probs=[p], num_classes=1) for i, p in enumerate(probs)])

    async def pooling(self, body: PoolingRequest | dict[str, Any]) -> PoolingResponse:
        """vLLM's /pooling: task classify (as /classify, data = [reward]) or token_classify (outcome/process RMs:
        data = [[p], ...] per completion token or step)."""
        import base64

        req: PoolingRequest = parse(PoolingRequest, body)
        task = req.task or ("classify" if self.scorer.task == "reward" else "token_classify")
        if task == "token_classify" and self.scorer.task == "reward":
            raise bad_field("task", "token_classify needs an outcome or process RM export; this export is a scalar "
                                    "reward model (use task 'classify')")
        raw, probs, n_tokens = await self._score_whole(req, want_probs=task == "token_classify")
        if task == "classify":
            rows: list[Any] = [[p] for p in self._activate(raw, req.activated())]
        else:
            rows = [[[float(x)] for x in p] for p in probs]
        if req.encoding_format == "base64":
            rows = [base64.b64encode(np.asarray(r, dtype="<f4").tobytes()).decode() for r in rows]
        return PoolingResponse(
            model=self._name(), usage=UsageInfo(prompt_tokens=n_tokens, total_tokens=n_tokens),
            data=[PoolingResponseData(index=i, data=r) for i, r in enumerate(rows)])

    def models(self) -> ModelList:
        """vLLM's /v1/models: the one model this deployment serves."""
        return ModelList(data=[ModelCard(id=self._name(), root=self.scorer.model_id,
                                         max_model_len=self.scorer.max_length)])

    async def _score_whole(self, req: ClassifyRequest, want_probs: bool) -> tuple[np.ndarray, Any, int]:
        """A vLLM-style request -> (rewards, per-row probabilities or None, tokens scored)."""
        if self.served_model_name is not None and req.model not in (None, self.served_model_name):
            raise BadRequest([{"loc": ["body", "model"], "type": "value_error",
                               "msg": f"The model `{req.model}` does not exist."}], status=404)
        t = req.truncate_prompt_tokens
        if t is not None and t != -1 and t < self.scorer.max_length:
            raise bad_field("truncate_prompt_tokens", f"{t} is below the model's max_length "
                            f"({self.scorer.max_length}); texts are cut to max_length from their start, as in training")
        if req.messages is not None:
            chat = _plain([req.messages])[0]
            check_limits({"messages": [req.messages]}, self.max_items, self.max_text_chars)
            prompts, completions = [chat[:-1]], [chat[-1:]]
        else:
            texts = [req.input] if isinstance(req.input, str) else list(req.input)
            check_limits({"input": texts}, self.max_items, self.max_text_chars)
            prompts, completions = [""] * len(texts), texts
        tok = await self._tokenize(prompts, completions)
        raw, probs = await self._rewards(tok.ids, tok.marks)
        return raw, probs if want_probs else None, sum(len(s) for s in tok.ids)

    def _activate(self, raw: np.ndarray, activation: bool) -> list[float]:
        """Scalar RM: raw reward, or its sigmoid (vLLM's activation for one class). ORM/PRM: already a probability."""
        if activation and self.scorer.task == "reward":
            raw = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
        return [float(x) for x in raw]

    def _name(self) -> str:
        return self.served_model_name or self.scorer.model_id

    def model_info(self) -> ModelInfo:
        return ModelInfo(model=self.scorer.model_id, meta=self.scorer.meta, settings=self.settings,
                         replica=serve.get_replica_context().replica_id.unique_id,
                         rows_scored=self.rows_scored, batches=self.batches)

    # ---- scoring
    async def _tokenize(self, prompts: list[Any], completions: list[Any]) -> Any:
        """Tokenise a large request in a worker thread (the Rust tokenizer releases the GIL, so the event loop keeps
        accepting requests and filling batches meanwhile); a small one, e.g. one rollout, inline: its tokenisation
        costs less than the hop to a thread and back."""
        if sum(_chars(t) for t in prompts) + sum(_chars(t) for t in completions) <= INLINE_TOKENIZE_CHARS:
            return self.scorer.tokenize(prompts, completions)
        return await asyncio.to_thread(self.scorer.tokenize, prompts, completions)

    async def _rewards(self, seqs: list[list[int]], marks: list[list[int]] | None
                       ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Token ids (n rows) -> (rewards (n,) float32, ORM/PRM per-token/per-step probabilities or None), through
        the cross-request batch queue or one request at a time."""
        if not self.batching:
            async with self._one_at_a_time:
                return await self._forward(seqs, marks)
        rows = _queue_rows(seqs, marks, self.token_budget, self.max_batch_size)
        out = await asyncio.gather(*(self._score_rows(r) for r in rows))
        rewards = np.asarray([r for r, _ in out], dtype=np.float32)
        return rewards, None if marks is None else [d for _, d in out]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01, batch_size_fn=_batch_slots)
    async def _score_rows(self, rows: list[_Row]) -> list[tuple[float, np.ndarray | None]]:
        marks = None if rows[0].marks is None else [r.marks for r in rows]
        rewards, details = await self._forward([r.ids for r in rows], marks)
        return [(float(r), None if details is None else details[i]) for i, r in enumerate(rewards)]

    async def _forward(self, seqs: list[list[int]], marks: list[list[int]] | None
                       ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        # In a worker thread, so the event loop keeps accepting and tokenising requests during the forward.
        out = await asyncio.to_thread(self.scorer.score_ids_detailed, seqs, marks)
        self.rows_scored += len(seqs)
        self.batches += 1
        return out


def _read_token(env_name: str | None) -> str | None:
    """The bearer token from `env_name`; a name given but no value fails the replica instead of serving openly."""
    if env_name is None:
        return None
    token = os.environ.get(env_name, "")
    if not token:
        raise RuntimeError(f"auth_token_env={env_name!r} but that environment variable is empty on this replica")
    return token


# ---------------------------------------------------------------- HTTP: FastAPI app per replica
class BearerAuth:
    """ASGI middleware: every path but OPEN_PATHS needs `Authorization: Bearer <token>` (401 otherwise)."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.expected = b"Bearer " + token.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and _app_path(scope) not in OPEN_PATHS:
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                resp = JSONResponse({"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _app_path(scope: dict[str, Any]) -> str:
    """Request path relative to the app's route prefix (Serve passes the prefix as root_path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class BodyLimit:
    """ASGI middleware: a POST body over `max_bytes` gets 413 before it is read. A declared Content-Length is checked
    up front; a chunked body is read only until it passes the limit. The replica pulls a body from Serve's proxy as
    it reads it, so a refused body is not shipped to the replica either."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send, int(declared))
                return
            await self.app(scope, receive, send)
            return
        messages, size = [], 0  # chunked: buffer up to the limit, then hand the messages on
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, None)
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        pending = iter(messages)

        async def replay() -> dict[str, Any]:
            return next(pending, None) or await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any, size: int | None) -> None:
        msg = (f"request body of {size if size is not None else 'more than ' + str(self.max_bytes)} bytes; this server "
               f"takes at most {self.max_bytes} (max_body_bytes)")
        body = vllm_error(msg, 413) if _app_path(scope) in VLLM_PATHS else {"detail": msg}
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the field; 400 for a body that is not JSON at all; vLLM's routes answer vLLM's error body with
    400 (404 for an unknown model name). The offending input is not echoed."""
    if isinstance(exc, BadRequest):
        errors = exc.errors
    else:
        errors = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]}
                  for e in exc.errors()]  # type: ignore[attr-defined]
    if _app_path(request.scope) in VLLM_PATHS:
        errors = [{"loc": ["body"], "type": e["type"], "msg": f"invalid json at character {e['loc'][-1]}: {e['msg']}"}
                  if e["type"] == "json_invalid" else e for e in errors]
        status = getattr(exc, "status", None) or 400
        fields = [p for e in errors for p in e["loc"][1:2] if isinstance(p, str)]
        return JSONResponse(vllm_error(BadRequest(errors).message(), status, fields[0] if fields else None),
                            status_code=status)
    status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=status)


def make_api(server: RewardServer, token: str | None, max_body_bytes: int = 16 * 2**20) -> FastAPI:
    """The routes of one replica, bound to its `server`; with a token, all but /healthz need it."""
    api = FastAPI(title="rayrm reward server", description="Rewards from a rayrm reward-model export, batched "
                  "across requests. POST /v1/rewards, POST /v1/preferences, OpenRLHF's POST /get_reward, vLLM's "
                  "POST /classify, POST /pooling and GET /v1/models, GET /v1/model, GET /healthz.")
    api.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if token is not None:
        api.add_middleware(BearerAuth, token=token)  # added last = runs first: no body is looked at unauthenticated
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(BadRequest, _validation_error)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/model")
    async def model() -> ModelInfo:
        return server.model_info()

    @api.post("/v1/rewards")
    async def rewards(body: RewardRequest) -> RewardResponse:
        return await server.score(body)

    @api.post("/v1/preferences")
    async def preferences(body: PreferenceRequest) -> PreferenceResponse:
        return await server.prefer(body)

    @api.post("/get_reward")
    async def get_reward(body: OpenRLHFRequest) -> OpenRLHFResponse:
        return await server.get_reward(body)

    @api.post("/classify")
    async def classify(body: ClassifyRequest) -> ClassificationResponse:
        return await server.classify(body)

    @api.post("/pooling")
    async def pooling(body: PoolingRequest) -> PoolingResponse:
        return await server.pooling(body)

    @api.get("/v1/models")
    async def models() -> ModelList:
        return server.models()

    return api


# ---------------------------------------------------------------- app builders
def build_app(args: dict[str, Any]) -> Application:
    """Serve config file entry point: `import_path: rayrm.serve:build_app`, `args:` = ServeConfig fields."""
    return reward_app(build_config(ServeConfig, args))


def replica_range(cfg: ServeConfig) -> tuple[int, int]:
    """(min, max) replicas with "auto" resolved: the replicas of cpus_per_replica CPUs (and gpus_per_replica GPUs,
    when > 0) that the cluster holds (this machine's CPUs when no Ray cluster is connected yet)."""
    import ray

    res = ray.cluster_resources() if ray.is_initialized() else {"CPU": float(os.cpu_count() or 1)}
    fit = int(res.get("CPU", 1.0) // cfg.cpus_per_replica + 1e-9)
    if cfg.gpus_per_replica > 0:
        fit = min(fit, int(res.get("GPU", 0.0) // cfg.gpus_per_replica + 1e-9))
    fit = max(1, fit)
    lo = fit if cfg.min_replicas == "auto" else cfg.min_replicas
    hi = fit if cfg.max_replicas == "auto" else cfg.max_replicas
    return lo, max(lo, hi)


def reward_app(cfg: ServeConfig) -> Application:
    """The application for a validated config: replica resources, scaling, batching and limits from `cfg`.

    With `auth_token_env` set and that variable set here, its value travels to the replicas in their runtime_env
    (visible to whoever can read the cluster's Serve config); otherwise each replica's own environment must hold it.
    """
    actor_options: dict[str, Any] = {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica}
    env = {k: str(int(v) if isinstance(v, bool) else v) for k, v in cfg.replica_env.items()}
    if cfg.auth_token_env and os.environ.get(cfg.auth_token_env):
        env[cfg.auth_token_env] = os.environ[cfg.auth_token_env]
    if env:
        actor_options["runtime_env"] = {"env_vars": env}
    lo, hi = replica_range(cfg)
    if lo == hi:
        scaling: dict[str, Any] = {"num_replicas": lo}
    else:
        scaling = {"autoscaling_config": {
            "min_replicas": lo, "max_replicas": hi, "initial_replicas": max(1, lo),
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s, "downscale_delay_s": cfg.downscale_delay_s,
        }}
    deployment = RewardServer.options(
        ray_actor_options=actor_options, max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests, logging_config={"enable_access_log": cfg.access_log},
        **scaling,
    )
    return deployment.bind(
        cfg.model, dtype=cfg.dtype, torch_threads=cfg.torch_threads or math.ceil(cfg.cpus_per_replica),
        batching=cfg.batching, max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s,
        token_budget=cfg.token_budget, max_items=cfg.max_items, max_text_chars=cfg.max_text_chars,
        auth_token_env=cfg.auth_token_env, openrlhf_normalized=cfg.openrlhf_normalized,
        gil_switch_interval_s=cfg.gil_switch_interval_s, max_body_bytes=cfg.max_body_bytes,
        served_model_name=cfg.served_model_name, packing=cfg.packing,
    )


def app_url(cfg: ServeConfig) -> str:
    """Base URL of the app jobs/serve.py starts (clients append /v1/rewards etc.)."""
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def deploy(*cfgs: ServeConfig) -> list[Any]:
    """Start Serve on the current Ray cluster (HTTP on host:port of the configs) and deploy one app per config,
    all at once (replicas start in parallel); returns their handles.

    Serve's HTTP options are cluster-wide and fixed by whoever starts Serve first; a later deploy keeps them.
    """
    import ray
    from ray.serve.api import RunTarget

    if len({(c.host, c.port, c.request_timeout_s) for c in cfgs}) != 1:
        raise ValueError("apps deployed together share Serve's HTTP options: give them one host, port and timeout")
    if not ray.is_initialized():
        ray.init()  # inside `ray job submit` this joins the cluster; elsewhere it starts a local one
    http: dict[str, Any] = {"host": cfgs[0].host, "port": cfgs[0].port}
    if cfgs[0].request_timeout_s is not None:
        http["request_timeout_s"] = cfgs[0].request_timeout_s
    # the proxies' access log line per request too (Serve's own logging config, cluster-wide like http_options)
    serve.start(http_options=http, logging_config={"enable_access_log": any(c.access_log for c in cfgs)})
    return serve.run_many([RunTarget(reward_app(c), name=c.name, route_prefix=c.route_prefix) for c in cfgs])


def run_server(cfg: ServeConfig, verbose: bool = False) -> None:
    """`rayrm serve`: deploy, print the URL and a request to try, serve until Ctrl-C, then delete the app."""
    import time

    try:
        deploy(cfg)
        url = app_url(cfg)
        print(f"[rayrm.serve] {cfg.model} at {url}  (POST /v1/rewards, POST /v1/preferences, POST /get_reward, "
              f"POST /classify, POST /pooling, GET /v1/models, GET /v1/model, GET /healthz, GET /docs); Ctrl-C stops",
              flush=True)
        print(f"[rayrm.serve] try: curl -s {url}/v1/rewards -H 'content-type: application/json' "
              """-d '{"prompts": ["Hi"], "completions": ["Hello! How can I help?"]}'""", flush=True)
        if verbose:
            print(cfg.model_dump_json(), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(cfg.name)
