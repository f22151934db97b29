"""`rayrm.json`, the metadata beside an export's weights, defined once: written and read only through `ExportMeta`.

Scoring, serving, evaluation and the monitor repeat training's tokenisation and read-out from it (max_length,
padding side, EOS, task, aggregate) and use its statistics (reward mean/std, calibration temperature).

Format history: 1 had no `task`, `aggregate`, `step_separator`, `temperature`, `data` or `wall_s` in its first
releases; such files load with the defaults below (a scalar reward model, T = 1). 2 is format 1 with every field
always present and checked.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rayrm.errors import UserError

META_FILE = "rayrm.json"
FORMAT = 2


class ExportMeta(BaseModel):
    """What a rayrm export is and how to score with it."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(FORMAT, ge=1, le=FORMAT, description="rayrm.json format version (older ones still load)")
    base_model: str = Field(description="the model that was fine-tuned: hub id, local dir or pkg:<package>")
    tokenizer: str = Field(description="the tokenizer it was trained with (also saved in the export)")
    architecture: str = Field(description="the transformers class, e.g. Qwen3ForSequenceClassification")
    task: Literal["reward", "orm", "prm"] = Field("reward", description="scalar RM, outcome RM or process RM")
    reward_readout: Literal["last_non_pad_token", "encoder_pooler", "token_classifier"] = Field(
        description="where the reward is read: a decoder's last real token, an encoder's pooler, or per token")
    aggregate: Literal["mean", "min", "product", "last"] | None = Field(
        None, description="ORM/PRM: per-token or per-step probabilities -> one score; None for scalar RMs")
    step_separator: str = Field("\n", description="PRM: the text between steps")
    max_length: int = Field(ge=1, description="tokens per prompt + completion; longer ones lose the prompt's start")
    padding_side: Literal["left", "right"] = "right"
    append_eos: bool = Field(True, description="an EOS (or [SEP]) ends every sequence, as in training")
    hh_messages: bool = Field(False, description="training rendered HH text prompts as chat messages "
                              "(data.hh_messages); the monitor repeats it for canary pairs")
    loss: str = Field(description="train.loss of the run ('untrained' for a fresh head)")
    dtype: str = Field(description="dtype of the saved weights")
    precision: str | None = Field(None, description="the precision training ran in (deepspeed.precision, auto resolved)")
    reward_mean: float = Field(0.0, description="mean reward over the eval split: normalized = (r - mean) / std")
    reward_std: float = Field(1.0, gt=0, description="std of the reward over the eval split")
    temperature: float = Field(1.0, gt=0, description="calibrated P(a > b) = sigmoid((r_a - r_b) / T); 1 if not fitted")
    lora: dict[str, Any] | None = Field(None, description="LoRA settings of the run (r, alpha, dropout, "
                                                         "target_modules, trainable_fraction); the weights are merged")
    metrics: dict[str, float] = Field(default_factory=dict, description="final training and held-out metrics")
    data: dict[str, int] = Field(default_factory=dict, description="row counts: train, eval, skipped, truncated")
    wall_s: float | None = Field(None, description="training wall time in seconds")

    @field_validator("temperature", mode="before")
    @classmethod
    def _unfitted(cls, v: Any) -> Any:
        return 1.0 if v is None else v  # early format-1 files wrote null when no temperature was fitted

    # ------------------------------------------------------------ files
    @classmethod
    def path(cls, export_dir: str) -> str:
        return os.path.join(export_dir, META_FILE)

    @classmethod
    def read(cls, export_dir: str) -> ExportMeta:
        """The metadata of an export directory; a missing, malformed or invalid rayrm.json is a user error."""
        path = cls.path(export_dir)
        try:
            with open(path) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise UserError(f"{path} not found: not a rayrm export") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        try:
            meta = cls.model_validate(raw)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            where = ".".join(str(x) for x in err["loc"]) or "(top level)"
            raise UserError(f"{path}: field '{where}': {err['msg']}") from None
        meta.format = FORMAT  # read into the current format; written back as such
        return meta

    def write(self, export_dir: str) -> str:
        os.makedirs(export_dir, exist_ok=True)
        path = self.path(export_dir)
        with open(path, "w") as f:
            json.dump(self.model_dump(), f, indent=2, sort_keys=True)  # NaN metrics stay NaN (Python's JSON)
        return path
