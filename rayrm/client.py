"""A client for the reward server that is also an RL reward function.

    from rayrm.client import RewardClient
    reward = RewardClient("http://head:8000")                  # over HTTP (POST /v1/rewards)
    reward = RewardClient(serve.get_app_handle("reward"))      # inside the cluster: a DeploymentHandle, no HTTP
    GRPOTrainer(model=..., reward_funcs=reward, ...)           # TRL calls reward(prompts=..., completions=..., **cols)
    reward(["Q: 2+2?"], [" 4"])                                # -> [1.93]

`RewardClient(...)(prompts, completions, **kwargs) -> list[float]` takes TRL's calling convention: prompts and
completions as strings, or as message lists for conversational data, plus extra keyword arguments (dataset
columns, `completion_ids`, `trainer_state`, ...), which it ignores. Every attempt has a timeout; connection errors,
timeouts, 408/429/5xx answers and dead replicas are retried with exponential backoff; a 4xx answer (the request
itself is wrong) is raised at once as `BadRewardRequest` naming the field.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Sequence

REWARD_KINDS = ("raw", "normalized", "whitened")
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class BadRewardRequest(ValueError):
    """The server refused the request as invalid (HTTP 4xx or a handle's BadRequest); retrying cannot help."""


class RewardServerError(RuntimeError):
    """No answer after all retries; the last error is chained."""


def prompt_groups(prompts: Sequence[Any]) -> list[int]:
    """Group id per row: the index of the first row with the same prompt (GRPO repeats each prompt G times)."""
    first: dict[str, int] = {}
    return [first.setdefault(p if isinstance(p, str) else json.dumps(p, sort_keys=True), i)
            for i, p in enumerate(prompts)]


class RewardClient:
    """Callable reward function backed by the rayrm reward server (an HTTP URL or a Serve DeploymentHandle).

    `reward` picks what comes back: "raw" rewards, "normalized" with the checkpoint's training stats, or
    "whitened" within the rows that share a prompt. `retries` extra attempts follow the first, after
    `backoff * 2**k` seconds. `token` is sent as `Authorization: Bearer <token>` (HTTP only).
    """

    def __init__(
        self,
        url_or_handle: Any,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        reward: str = "raw",
        token: str | None = None,
    ) -> None:
        if reward not in REWARD_KINDS:
            raise ValueError(f"reward must be one of {REWARD_KINDS}, got {reward!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        self.target = url_or_handle.rstrip("/") if isinstance(url_or_handle, str) else url_or_handle
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.reward, self.token = reward, token
        self.attempts_failed = 0  # transient failures retried so far (observability, tests)
        self._session: Any = None
        self.__name__ = "served_reward"  # TRL logs reward functions by name

    # ---- the reward function
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """Rewards (n,) for n (prompt, completion) rows; extra keyword arguments (TRL's columns) are ignored."""
        body = self._body(prompts, completions)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._pick(self._post_http(body) if isinstance(self.target, str) else self._call_handle(body))
            except BadRewardRequest:
                raise
            except Exception as e:  # transient: connection, timeout, 5xx, a replica that died mid-request
                last = e
                self.attempts_failed += 1
        raise RewardServerError(f"no reward answer from {self._where()} after {self.retries + 1} attempts: {last}") \
            from last

    async def score_async(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        """The same from async code (e.g. an async Ray actor): awaits the handle instead of blocking on it."""
        if isinstance(self.target, str):
            return await asyncio.to_thread(self, prompts, completions)
        body = self._body(prompts, completions)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._pick(await asyncio.wait_for(self.target.score.remote(body), self.timeout))
            except Exception as e:
                self._raise_if_bad_request(e)
                last = e
                self.attempts_failed += 1
        raise RewardServerError(f"no reward answer from {self._where()} after {self.retries + 1} attempts: {last}") \
            from last

    # ---- transports
    def _post_http(self, body: dict[str, Any]) -> dict[str, Any]:
        import requests

        if self._session is None:
            self._session = requests.Session()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = self._session.post(f"{self.target}/v1/rewards", json=body, headers=headers, timeout=self.timeout)
        if r.status_code == 200:
            return r.json()
        if r.status_code in RETRY_STATUS:
            raise ConnectionError(f"HTTP {r.status_code}: {r.text[:300]}")
        raise BadRewardRequest(f"HTTP {r.status_code} from {self.target}/v1/rewards: {r.text[:1000]}")

    def _call_handle(self, body: dict[str, Any]) -> Any:
        response = self.target.score.remote(body)
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

    def _pick(self, answer: Any) -> list[float]:
        data = answer if isinstance(answer, dict) else answer.model_dump()
        key = {"raw": "rewards", "normalized": "normalized", "whitened": "whitened"}[self.reward]
        return [float(x) for x in data[key]]

    def _where(self) -> str:
        return self.target if isinstance(self.target, str) else f"handle {self.target.deployment_name}"

    def __getstate__(self) -> dict[str, Any]:  # picklable into Ray actors: the HTTP session is rebuilt there
        state = dict(self.__dict__)
        state["_session"] = None
        return state
