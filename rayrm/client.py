"""A client for the reward server that is also an RL reward function.

    from rayrm.client import RewardClient
    reward = RewardClient("http://head:8000")                  # over HTTP (POST /v1/rewards)
    reward = RewardClient(serve.get_app_handle("reward"))      # inside the cluster: a DeploymentHandle, no HTTP
    GRPOTrainer(model=..., reward_funcs=reward, ...)           # TRL calls reward(prompts=..., completions=..., **cols)
    reward(["Q: 2+2?"], [" 4"])                                # -> [1.93]
    await reward.score_async(["Q: 2+2?"], [" 4"])              # from async code: no thread per call
    reward.prefer(["Q: 2+2?"], [" 4"], [" 5"])                 # -> P(a better than b) per row, calibrated

`RewardClient(...)(prompts, completions, **kwargs) -> list[float]` takes TRL's calling convention: prompts and
completions as strings, or as message lists for conversational data, plus extra keyword arguments (dataset
columns, `completion_ids`, `trainer_state`, ...), which it ignores.

Transport: HTTP goes through httpx with a connection pool (a sync `httpx.Client` for calls, an `httpx.AsyncClient`
per event loop for the async methods); a handle is called directly (`.remote()`), awaited in the async methods.
Every attempt has a timeout. Connection errors, timeouts, 408/429/5xx answers and dead replicas are retried by
tenacity with exponential backoff and jitter; a 4xx answer (the request itself is wrong) is raised at once as
`BadRewardRequest` naming the field.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Sequence

REWARD_KINDS = ("raw", "normalized", "whitened")
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class BadRewardRequest(ValueError):
    """The server refused the request as invalid (HTTP 4xx or a handle's BadRequest); retrying cannot help."""


class RewardServerError(RuntimeError):
    """No answer after all retries; the last error is chained."""


class _Transient(ConnectionError):
    """An HTTP answer worth retrying (408, 429, 5xx)."""


def prompt_groups(prompts: Sequence[Any]) -> list[int]:
    """Group id per row: the index of the first row with the same prompt (GRPO repeats each prompt G times)."""
    first: dict[str, int] = {}
    return [first.setdefault(p if isinstance(p, str) else json.dumps(p, sort_keys=True), i)
            for i, p in enumerate(prompts)]


class RewardClient:
    """Callable reward function backed by the rayrm reward server (an HTTP URL or a Serve DeploymentHandle).

    `reward` picks what comes back: "raw" rewards, "normalized" with the checkpoint's training stats, or
    "whitened" within the rows that share a prompt. `retries` extra attempts follow the first, after about
    `backoff * 2**k` seconds (plus up to `backoff` of jitter). `token` is sent as `Authorization: Bearer <token>`
    (HTTP only). `max_connections` bounds the HTTP connection pool (the concurrent requests of one client).
    """

    def __init__(
        self,
        url_or_handle: Any,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        reward: str = "raw",
        token: str | None = None,
        max_connections: int = 256,
    ) -> None:
        if reward not in REWARD_KINDS:
            raise ValueError(f"reward must be one of {REWARD_KINDS}, got {reward!r}")
        if timeout <= 0 or retries < 0 or backoff < 0 or max_connections < 1:
            raise ValueError("timeout must be > 0, retries and backoff >= 0, max_connections >= 1")
        self.target = url_or_handle.rstrip("/") if isinstance(url_or_handle, str) else url_or_handle
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.reward, self.token, self.max_connections = reward, token, max_connections
        self.attempts_failed = 0  # transient failures retried so far (observability, tests)
        self._client: Any = None
        self._aclients: dict[int, Any] = {}  # one pooled AsyncClient per event loop (id of the loop)
        self.__name__ = "served_reward"  # TRL logs reward functions by name

    # ---- the reward function
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """Rewards (n,) for n (prompt, completion) rows; extra keyword arguments (TRL's columns) are ignored."""
        return self._pick(self._call("/v1/rewards", "score", self._body(prompts, completions)))

    async def score_async(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """The same from async code (an async Ray actor, an agent loop): awaits a pooled HTTP connection or the
        handle, no thread per call."""
        return self._pick(await self._call_async("/v1/rewards", "score", self._body(prompts, completions)))

    def prefer(self, prompts: Sequence[Any], completions_a: Sequence[Any], completions_b: Sequence[Any]
               ) -> list[float]:
        """Calibrated P(completion a preferred over completion b) per row (POST /v1/preferences)."""
        body = {"prompts": list(prompts), "completions_a": list(completions_a), "completions_b": list(completions_b)}
        return [float(p) for p in self._as_dict(self._call("/v1/preferences", "prefer", body))["p_a_better"]]

    async def prefer_async(self, prompts: Sequence[Any], completions_a: Sequence[Any],
                           completions_b: Sequence[Any]) -> list[float]:
        body = {"prompts": list(prompts), "completions_a": list(completions_a), "completions_b": list(completions_b)}
        answer = await self._call_async("/v1/preferences", "prefer", body)
        return [float(p) for p in self._as_dict(answer)["p_a_better"]]

    # ---- retries (tenacity): everything but a refused request is retried
    def _retry_kwargs(self) -> dict[str, Any]:
        from tenacity import retry_if_not_exception_type, stop_after_attempt, wait_exponential_jitter, wait_none

        def count(_: Any) -> None:
            self.attempts_failed += 1

        wait = (wait_exponential_jitter(initial=self.backoff, jitter=self.backoff, max=max(self.backoff * 32, 1.0))
                if self.backoff > 0 else wait_none())
        return {"stop": stop_after_attempt(self.retries + 1), "wait": wait,
                "retry": retry_if_not_exception_type(BadRewardRequest), "before_sleep": count, "reraise": True}

    def _call(self, path: str, method: str, body: dict[str, Any]) -> Any:
        from tenacity import Retrying

        send: Callable[[], Any] = (lambda: self._post_http(path, body)) if isinstance(self.target, str) else \
            (lambda: self._call_handle(method, body))
        try:
            return Retrying(**self._retry_kwargs())(send)
        except BadRewardRequest:
            raise
        except Exception as e:
            raise self._gave_up(e) from e

    async def _call_async(self, path: str, method: str, body: dict[str, Any]) -> Any:
        from tenacity import AsyncRetrying

        async def send() -> Any:
            if isinstance(self.target, str):
                return await self._post_http_async(path, body)
            try:
                return await asyncio.wait_for(getattr(self.target, method).remote(body), self.timeout)
            except Exception as e:
                self._raise_if_bad_request(e)
                raise

        try:
            return await AsyncRetrying(**self._retry_kwargs())(send)
        except BadRewardRequest:
            raise
        except Exception as e:
            raise self._gave_up(e) from e

    def _gave_up(self, last: Exception) -> RewardServerError:
        self.attempts_failed += 1  # the last attempt failed too
        return RewardServerError(f"no reward answer from {self._where()} after {self.retries + 1} attempts: "
                                 f"{type(last).__name__}: {last}")

    # ---- transports
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _limits(self) -> Any:
        import httpx

        return httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)

    def _post_http(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, limits=self._limits(), headers=self._headers())
        return self._check(self._client.post(f"{self.target}{path}", json=body), path)

    async def _post_http_async(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        loop = id(asyncio.get_running_loop())
        client = self._aclients.get(loop)
        if client is None:
            client = self._aclients[loop] = httpx.AsyncClient(timeout=self.timeout, limits=self._limits(),
                                                              headers=self._headers())
        return self._check(await client.post(f"{self.target}{path}", json=body), path)

    def _check(self, r: Any, path: str) -> dict[str, Any]:
        if r.status_code == 200:
            return r.json()
        if r.status_code in RETRY_STATUS:
            raise _Transient(f"HTTP {r.status_code}: {r.text[:300]}")
        raise BadRewardRequest(f"HTTP {r.status_code} from {self.target}{path}: {r.text[:1000]}")

    def _call_handle(self, method: str, body: dict[str, Any]) -> Any:
        response = getattr(self.target, method).remote(body)
        try:
            return response.result(timeout_s=self.timeout)
        except Exception as e:
            self._raise_if_bad_request(e)
            if isinstance(e, TimeoutError):
                response.cancel()
            raise

    @staticmethod
    def _raise_if_bad_request(e: Exception) -> None:
        from rayrm.protocol import BadRequest  # Ray re-raises the replica's exception as a subclass of its type

        if isinstance(e, BadRequest):
            raise BadRewardRequest(str(e).strip().splitlines()[-1]) from e

    # ---- helpers
    def _body(self, prompts: Sequence[Any], completions: Sequence[Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"prompts": list(prompts), "completions": list(completions)}
        if self.reward == "whitened":
            body["groups"] = prompt_groups(prompts)
        return body

    @staticmethod
    def _as_dict(answer: Any) -> dict[str, Any]:
        return answer if isinstance(answer, dict) else answer.model_dump()

    def _pick(self, answer: Any) -> list[float]:
        key = {"raw": "rewards", "normalized": "normalized", "whitened": "whitened"}[self.reward]
        return [float(x) for x in self._as_dict(answer)[key]]

    def _where(self) -> str:
        return self.target if isinstance(self.target, str) else f"handle {self.target.deployment_name}"

    def close(self) -> None:
        """Close the sync HTTP pool (async pools close with their event loop's garbage)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __getstate__(self) -> dict[str, Any]:  # picklable into Ray actors: the HTTP pools are rebuilt there
        state = dict(self.__dict__)
        state["_client"], state["_aclients"] = None, {}
        return state
