"""Every shipped YAML loads and validates; overrides and errors behave."""

from pathlib import Path

import pytest
import yaml

from rayrm.config import ConfigError, EvalConfig, JudgeConfig, MonitorConfig, ScoreConfig, ServeConfig, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = {"train": TrainConfig, "score": ScoreConfig, "eval": EvalConfig, "judge": JudgeConfig, "serve": ServeConfig, "monitor": MonitorConfig}
REQUIRED = {"score": ["input=/data/rollouts.parquet", "output=/tmp/scored"], "eval": ["input=/s.parquet", "output=/tmp/e"], "judge": ["input=/p.jsonl", "output=/tmp/j"],
            "monitor": ["canary=/data/canary.jsonl", "output=/tmp/monitor"]}  # per-run keys a config leaves empty


def _is_serve_file(path: Path) -> bool:
    """Ray Serve's own config format (`serve run FILE`): tests/test_serve.py validates those with Serve's schema."""
    return "applications" in (yaml.safe_load(path.read_text()) or {})


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not _is_serve_file(p)),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_loads(path):
    kind = path.relative_to(ROOT / "configs").parts[0]
    assert kind in SCHEMAS, f"no schema for configs/{kind}"
    cfg = load_config(path, REQUIRED.get(kind, []), SCHEMAS[kind])
    assert path.read_text().startswith("#"), "each config opens with a comment giving its command"
    assert "python jobs/" in path.read_text()
    if isinstance(cfg, TrainConfig) and cfg.model.startswith("configs/"):
        assert (ROOT / cfg.model / "config.json").exists()


def test_dotted_overrides_are_typed():
    cfg = load_config(
        ROOT / "configs/train/minilm_hh.yaml",
        ["model=Qwen/Qwen3-0.6B", "deepspeed.zero_stage=3", "scaling.num_workers=16", "scaling.use_gpu=true", "optim.lr=1e-5"],
        TrainConfig,
    )
    assert cfg.model == "Qwen/Qwen3-0.6B" and cfg.deepspeed.zero_stage == 3
    assert cfg.scaling.num_workers == 16 and cfg.scaling.use_gpu is True and cfg.optim.lr == 1e-5



def test_on_off_switches_accept_yaml_booleans(tmp_path):
    # YAML 1.1 reads a bare `on`/`off` as true/false: both spellings mean the same switch
    path = tmp_path / "t.yaml"
    path.write_text("train:\n  packing: off\n")
    assert load_config(path, [], TrainConfig).train.packing == "off"
    assert load_config(None, ["train.packing=on"], TrainConfig).train.packing == "on"
    assert load_config(None, ["train.packing=auto"], TrainConfig).train.packing == "auto"
    with pytest.raises(ConfigError, match="train.packing"):
        load_config(None, ["train.packing=sometimes"], TrainConfig)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("deepspeed.zero_stage=5", "deepspeed.zero_stage"),
        ("scaling.num_workers=two", "scaling.num_workers"),
        ("data.nope=1", "data.nope"),
        ("train.loss=hinge", "train.loss"),
        ("scaling.use_gpu=3", "scaling.use_gpu"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(ROOT / "configs/train/default.yaml", [override], TrainConfig)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.eval_fraction=0", "data.eval_fraction"),
        ("train.log_every=0", "train.log_every"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
    ],
)
def test_semantic_checks(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(ROOT / "configs/train/default.yaml", [override], TrainConfig)


def test_score_config_requires_model_input_output():
    with pytest.raises(ConfigError, match="input is required"):
        load_config(ROOT / "configs/score/default.yaml", [], ScoreConfig)
    with pytest.raises(ConfigError, match="on_bad_row"):
        load_config(ROOT / "configs/score/default.yaml", REQUIRED["score"] + ["on_bad_row=drop"], ScoreConfig)
    for bad in ("task_max_calls=0", "malloc_arena_max=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0] + ": Input should be greater than or equal to 1"):
            load_config(ROOT / "configs/score/default.yaml", REQUIRED["score"] + [bad], ScoreConfig)
    cfg = load_config(ROOT / "configs/score/default.yaml", REQUIRED["score"] + ["task_max_calls=null"], ScoreConfig)
    assert cfg.task_max_calls is None and cfg.malloc_arena_max == 2


def test_monitor_thresholds_are_typed_and_checked():
    cfg = load_config(ROOT / "configs/monitor/default.yaml",
                      REQUIRED["monitor"] + ["thresholds.max_ece=null", "thresholds.min_accuracy=0.7"], MonitorConfig)
    assert cfg.thresholds.max_ece is None and cfg.thresholds.min_accuracy == 0.7
    with pytest.raises(ConfigError, match=r"thresholds\.max_std_ratio"):
        load_config(ROOT / "configs/monitor/default.yaml", REQUIRED["monitor"] + ["thresholds.max_std_ratio=0.5"],
                    MonitorConfig)
    with pytest.raises(ConfigError, match="canary is required"):
        load_config(ROOT / "configs/monitor/default.yaml", ["output=/tmp/m"], MonitorConfig)


def test_loss_choices_are_the_losses_rayrm_has():
    import typing

    from rayrm.config import Loss
    from rayrm.losses import LOSSES

    assert set(typing.get_args(Loss)) == set(LOSSES)


def test_every_field_has_a_default_and_a_reason():
    from rayrm.config import JudgeConfig, ServeConfig, describe

    for cls in (TrainConfig, ScoreConfig, ServeConfig, JudgeConfig, MonitorConfig):
        for key, default, reason in describe(cls):
            assert default != "" and reason, (cls.__name__, key)
