"""HTTP protocol of the reward server: pydantic request/response bodies and the validation error.

No Ray and no FastAPI here, so a client (`rayrm.client`) imports these types without Ray Serve; the server
(`rayrm.serve`) builds its routes on them.
"""

from __future__ import annotations

from typing import Annotated, Any, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator


# ---------------------------------------------------------------- request / response bodies
class Message(BaseModel):
    """One chat turn in TRL's conversational format."""

    model_config = ConfigDict(extra="allow")  # e.g. tool calls: handed to the chat template as they came
    role: StrictStr
    content: StrictStr


Conversation = Annotated[list[Message], Field(min_length=1)]
Text = Union[StrictStr, Conversation]


class RewardRequest(BaseModel):
    """POST /v1/rewards (and `RewardServer.score` through a handle): rows of (prompt, completion) to score."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silently ignored field
    prompts: list[Text] = Field(min_length=1, description="prompt per row: a string or a list of messages")
    completions: list[Text] = Field(min_length=1, description="completion per row, of the same kind as its prompt")
    groups: list[StrictInt | StrictStr] | None = Field(
        None, description="group id per row (e.g. the prompt's index); rewards are then also whitened per group")

    @model_validator(mode="after")
    def _rows_pair_up(self) -> RewardRequest:
        _pair_up(self.prompts, "completions", self.completions)
        if self.groups is not None and len(self.groups) != len(self.prompts):
            raise ValueError(f"'groups' has {len(self.groups)} items but 'prompts' has {len(self.prompts)}")
        return self


def _pair_up(prompts: list[Any], name: str, completions: list[Any]) -> None:
    """A completion list must match the prompts one to one, each of the same kind (text or message list)."""
    if len(completions) != len(prompts):
        raise ValueError(f"'{name}' has {len(completions)} items but 'prompts' has {len(prompts)}; "
                         "they pair up one to one")
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if isinstance(p, str) != isinstance(c, str):
            raise ValueError(f"'{name}[{i}]' must be the same kind as 'prompts[{i}]' (both strings or both message lists)")


class RewardResponse(BaseModel):
    rewards: list[float] = Field(description="raw reward per row (float32 precision)")
    normalized: list[float] = Field(description="(reward - mean) / std with the eval-split stats in rayrm.json")
    whitened: list[float] | None = Field(description="(reward - group mean) / group std when groups were given; "
                                                     "0 for a group whose rewards are all equal")
    truncated: list[bool] = Field(description="row lost tokens to the model's max_length (prompt from the left first)")
    model: str = Field(description="the export that produced the rewards")


class PreferenceRequest(BaseModel):
    """POST /v1/preferences: per row a prompt and two completions, a and b."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[Text] = Field(min_length=1, description="prompt per row: a string or a list of messages")
    completions_a: list[Text] = Field(min_length=1, description="first completion per row")
    completions_b: list[Text] = Field(min_length=1, description="second completion per row")

    @model_validator(mode="after")
    def _rows_pair_up(self) -> PreferenceRequest:
        _pair_up(self.prompts, "completions_a", self.completions_a)
        _pair_up(self.prompts, "completions_b", self.completions_b)
        return self


class PreferenceResponse(BaseModel):
    p_a_better: list[float] = Field(description="calibrated P(a preferred over b) = sigmoid((r_a - r_b) / T)")
    rewards_a: list[float]
    rewards_b: list[float]
    temperature: float = Field(description="T fitted on the eval split at training (rayrm.json; 1 if not fitted)")
    model: str


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote reward request: full texts (prompt + response), optional prompts and labels (ignored)."""

    model_config = ConfigDict(extra="allow")  # OpenRLHF variants add metadata, templates, ... which an RM ignores
    query: list[StrictStr] = Field(min_length=1, description="prompt+response text per row, as the policy saw it")
    prompts: list[Any] | None = None
    labels: list[Any] | None = None


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float]  # newer OpenRLHF reads `scores` (dynamic filtering); the same values
    extra_logs: dict[str, list[float]]


class ModelInfo(BaseModel):
    model: str
    meta: dict[str, Any] = Field(description="rayrm.json: base model, max_length, reward stats, training metrics")
    settings: dict[str, Any] = Field(description="batching and request limits of this deployment")
    replica: str = Field(description="the replica that answered")
    rows_scored: int = Field(description="rows this replica scored since it started")
    batches: int = Field(description="forward batches this replica ran (rows_scored / batches = mean batch size)")


class BadRequest(ValueError):
    """A request that fails validation. `errors` are FastAPI-style {loc, msg, type} dicts; HTTP answers 422."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors))

    def __reduce__(self) -> tuple[Any, ...]:  # survives the trip back to a handle caller
        return (BadRequest, (self.errors,))


def _loc(loc: Sequence[Any]) -> str:
    """('body', 'completions', 3) -> 'completions[3]' (the field a user wrote)."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _errors(e: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors without the offending input (which may be megabytes) and with the 'body' prefix."""
    return [{"loc": ["body", *e_["loc"]], "msg": e_["msg"], "type": e_["type"]} for e_ in e.errors(include_url=False)]


def parse(model: type[BaseModel], body: BaseModel | dict[str, Any]) -> Any:
    """A handle caller's dict (or an already parsed body) -> `model`, raising BadRequest like HTTP would."""
    if isinstance(body, model):
        return body
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise BadRequest(_errors(e)) from None


def check_limits(fields: dict[str, list[Any]], max_items: int, max_text_chars: int) -> None:
    """Config limits on a parsed body: rows per request and characters per text (a message list: all contents)."""
    errors = []
    for name, values in fields.items():
        if len(values) > max_items:
            errors.append({"loc": ["body", name], "type": "too_long",
                           "msg": f"{len(values)} items; this server takes at most {max_items} per request"})
            continue
        for i, v in enumerate(values):
            n = len(v) if isinstance(v, str) else sum(len(m.content) for m in v)
            if n > max_text_chars:
                errors.append({"loc": ["body", name, i], "type": "string_too_long",
                               "msg": f"{n} characters; this server takes at most {max_text_chars} per text"})
    if errors:
        raise BadRequest(errors)
