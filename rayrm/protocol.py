"""HTTP protocol of the reward server: pydantic request/response bodies and the validation error.

No Ray and no FastAPI here, so a client (`rayrm.client`) imports these types without Ray Serve; the server
(`rayrm.serve`) builds its routes on them.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Sequence, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError,
                      model_validator)


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
    return_probs: StrictBool = Field(
        False, description="outcome/process RM exports: also answer each row's per-token (ORM: every completion "
                           "token) or per-step (PRM: each step's last token) probability of being correct")

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
    probs: list[list[float]] | None = Field(None, description="with return_probs: per-token (ORM) or per-step (PRM) "
                                                              "probabilities per row; the reward is their aggregate")


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


# ---------------------------------------------------------------- vLLM's pooling API (/classify, /pooling, /v1/models)
# Field names follow vllm/entrypoints/pooling/{classify,pooling}/protocol.py and openai/engine/protocol.py (vLLM
# 0.10-0.13). Like vLLM's OpenAIBaseModel, unknown fields are accepted and ignored (chat_template_kwargs,
# mm_processor_kwargs, cache_salt, ...), so a client written for vLLM works unchanged.
class ClassifyRequest(BaseModel):
    """POST /classify: vLLM's ClassificationRequest, completion form (`input`) or chat form (`messages`).

    Each text is scored whole, as training scores prompt "" + completion (over max_length its start is cut). A chat
    is scored as prompt = all turns but the last, completion = the last (an assistant turn), through the chat template.
    """

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, description="served model name; checked when the server sets served_model_name")
    input: StrictStr | list[StrictStr] | None = Field(None, description="text, or one text per row")
    messages: Conversation | None = Field(None, description="one chat, ending with the assistant turn to score")
    use_activation: StrictBool | None = Field(None, description="true (default): sigmoid(reward); false: raw reward")
    activation: StrictBool | None = Field(None, description="vLLM <= 0.11 spelling of use_activation (verl sends it)")
    softmax: StrictBool | None = Field(None, description="older deprecated spelling of use_activation")
    truncate_prompt_tokens: StrictInt | None = Field(
        None, ge=-1, description="-1, null or >= the model's max_length: texts are cut to max_length from the start")
    user: str | None = None
    priority: int = 0
    request_id: str | None = None
    add_special_tokens: bool | None = Field(None, description="ignored: the export's training layout is always used")

    @model_validator(mode="after")
    def _one_form(self) -> ClassifyRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give exactly one of 'input' (a text or a list of texts) and 'messages' (a chat)")
        if isinstance(self.input, list) and not self.input:
            raise ValueError("'input' is an empty list")
        if self.messages is not None and (len(self.messages) < 2 or self.messages[-1].role != "assistant"):
            raise ValueError("'messages' must hold the conversation and end with the assistant turn to score")
        return self

    def activated(self) -> bool:
        """use_activation, else the older spellings in vLLM's order, else vLLM's default for classify: true."""
        for v in (self.use_activation, self.activation, self.softmax):
            if v is not None:
                return v
        return True


class PoolingRequest(ClassifyRequest):
    """POST /pooling: vLLM's PoolingRequest for the tasks a reward model has."""

    task: Literal["classify", "token_classify"] | None = Field(
        None, description="classify: the reward per text; token_classify (outcome/process RMs): per-token or per-step "
                          "probabilities; null: classify for a scalar RM, token_classify otherwise")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32 bytes")


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: dict[str, Any] | None = None


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float] = Field(description="[reward]: raw, or sigmoid(reward) with use_activation")
    num_classes: int


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _ListResponse(BaseModel):
    """What vLLM's pooling responses share, in vLLM's field order: id, "list", creation time, model, data, usage."""

    id: str
    object: str = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[Any]
    usage: UsageInfo


class ClassificationResponse(_ListResponse):
    id: str = Field(default_factory=lambda: _new_id("classify"))
    data: list[ClassificationData]


class PoolingResponseData(BaseModel):
    index: int
    object: str = "pooling"
    data: list[list[float]] | list[float] | str = Field(
        description="classify: [reward]; token_classify: [[p], ...] per completion token (ORM) or step (PRM)")


class PoolingResponse(_ListResponse):
    id: str = Field(default_factory=lambda: _new_id("pool"))
    data: list[PoolingResponseData]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "rayrm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[dict[str, Any]] = Field(default_factory=list)


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ModelInfo(BaseModel):
    model: str
    meta: dict[str, Any] = Field(description="rayrm.json: base model, max_length, reward stats, training metrics")
    settings: dict[str, Any] = Field(description="batching and request limits of this deployment")
    replica: str = Field(description="the replica that answered")
    rows_scored: int = Field(description="rows this replica scored since it started")
    batches: int = Field(description="forward batches this replica ran (rows_scored / batches = mean batch size)")


class BadRequest(ValueError):
    """A request that fails validation. `errors` are FastAPI-style {loc, msg, type} dicts; HTTP answers 422
    (vLLM's routes: 400, or `status` where set, e.g. 404 for an unknown model name, in vLLM's error body)."""

    def __init__(self, errors: list[dict[str, Any]], status: int | None = None):
        self.errors = errors
        self.status = status
        super().__init__(self.message())

    def message(self) -> str:
        return "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in self.errors)

    def __reduce__(self) -> tuple[Any, ...]:  # survives the trip back to a handle caller
        return (BadRequest, (self.errors, self.status))


def bad_field(field: str, msg: str, status: int | None = None) -> BadRequest:
    """A BadRequest about one body field."""
    return BadRequest([{"loc": ["body", field], "type": "value_error", "msg": msg}], status)


def vllm_error(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """vLLM's ErrorResponse body (vLLM >= 0.10): {"error": {message, type, param, code}}."""
    kind = {400: "BadRequestError", 404: "NotFoundError", 413: "RequestEntityTooLarge"}.get(status, "Error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


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
