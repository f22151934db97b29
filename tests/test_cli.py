"""The `rayrm` command line, each case in a fresh process: help, --print-config, one-line user errors (exit 2, no
traceback), the jobs/*.py shims, and the output of a real scoring run. (A training run's output is checked where a
user meets it, through `ray job submit`: tests/test_platform.py.)"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import HH, ROOT
from rayrm.cli import JOBS, user_error
from rayrm.config import ScoreConfig, TrainConfig, config_keys
from rayrm.data import BadRowError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def rayrm(*args: str, timeout: int = 120, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayrm", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, stderr exactly one line `rayrm: error: ...` holding every needle, no traceback."""
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert len(err) == 1 and err[0].startswith("rayrm: error: "), r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def test_console_script_is_declared_and_installed():
    scripts = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["rayrm"] == "rayrm.cli:main"
    exe = shutil.which("rayrm") or os.path.join(os.path.dirname(sys.executable), "rayrm")
    r = subprocess.run([exe, "--help"], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(job in r.stdout for job in JOBS), r.stdout + r.stderr


def test_top_level_help_lists_the_jobs():
    r = rayrm("--help")
    assert r.returncode == 0
    for name, job in JOBS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(job.summary[:30])}", r.stdout, re.M), (name, r.stdout)
    bare = rayrm()
    assert bare.returncode == 2 and "train" in bare.stdout  # no job: the help, and a usage exit code


@pytest.mark.parametrize("job", sorted(JOBS))
def test_job_help_lists_every_key_with_default_and_meaning(job):
    from rayrm.cli import _schema

    r = rayrm(job, "--help")
    assert r.returncode == 0, r.stderr
    for key in config_keys(_schema(job)):
        line = next((ln for ln in r.stdout.splitlines() if ln.split()[:1] == [key]), None)
        assert line is not None, f"{job} --help misses {key}"
    if job == "train":
        row = next(ln for ln in r.stdout.splitlines() if ln.split()[:1] == ["optim.lr"])
        assert row.split()[1] == "2.0e-05" and "learning rate" in row
        assert "--print-config" in r.stdout and "--verbose" in r.stdout


def test_print_config_shows_the_resolved_config():
    r = rayrm("train", "--config", "configs/train/default.yaml", "optim.lr=1e-4", "train.epochs=2", "--print-config")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["optim"]["lr"] == 1e-4 and cfg["train"]["epochs"] == 2
    assert cfg["name"] == "rayrm-default"  # from the file
    assert cfg["train"]["micro_batch_size"] == 8 and cfg["deepspeed"]["zero_stage"] == 2
    no_file = yaml.safe_load(rayrm("score", "--print-config", "input=x", "output=y", "model=m").stdout)
    assert no_file["token_budget"] == ScoreConfig.model_fields["token_budget"].default  # no --config: the built-in defaults


def test_unknown_key_suggests_the_key_meant():
    assert_one_line_error(rayrm("train", "--config", "configs/train/default.yaml", "optim.lrr=1e-4"),
                          "unknown config key 'optim.lrr'", "did you mean 'optim.lr'?")
    assert_one_line_error(rayrm("train", "--config", "configs/train/default.yaml", "lr=1e-4"),
                          "unknown config key 'lr'", "did you mean 'optim.lr'?")  # the right leaf, another section
    assert_one_line_error(rayrm("score", "--config", "configs/score/default.yaml", "token_budgett=9"),
                          "did you mean 'token_budget'?")


def test_bad_value_names_the_file_and_the_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((ROOT / "configs/train/default.yaml").read_text().replace("zero_stage: 2", "zero_stage: two"))
    assert_one_line_error(rayrm("train", "--config", str(cfg)), str(cfg), "deepspeed.zero_stage", "'two'")
    assert_one_line_error(rayrm("train", "--config", "configs/train/default.yaml", "optim.lr=abc"),
                          "command line", "optim.lr", "'abc'")
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    assert_one_line_error(rayrm("train", "--config", str(bad_yaml)), str(bad_yaml), "not valid YAML")


def test_missing_config_data_and_inputs():
    assert_one_line_error(rayrm("train", "--config", "configs/train/nope.yaml"), "configs/train/nope.yaml", "not found")
    assert_one_line_error(rayrm("train", "--config", "configs/train/default.yaml", "data.path=/no/such.jsonl"),
                          "'/no/such.jsonl' not found")
    assert_one_line_error(rayrm("train", "--config", "configs/train/default.yaml", "model=/no/such/model", "--verbose"),
                          "'/no/such/model'", "no such directory")


def test_missing_export_and_export_without_meta(tmp_path):
    for job, extra in (("score", ["input=x.jsonl", f"output={tmp_path}/o"]), ("serve", []),
                       ("monitor", ["canary=x.jsonl", f"output={tmp_path}/m"])):
        assert_one_line_error(rayrm(job, "--config", f"configs/{job}/default.yaml", f"model={tmp_path}/none", *extra),
                              f"'{tmp_path}/none'", "no such export directory")
    not_export = ROOT / "configs/models/tiny-qwen3"  # a model dir, but not written by `rayrm train`
    assert_one_line_error(rayrm("score", "--config", "configs/score/default.yaml", f"model={not_export}",
                                "input=x.jsonl", f"output={tmp_path}/o"), "has no rayrm.json")


def test_usage_errors_are_one_line_too():
    assert_one_line_error(rayrm("train", "--bogus"), "'--bogus'", "rayrm train --help")
    assert_one_line_error(rayrm("train", "stray"), "'stray'", "key=value")
    assert_one_line_error(rayrm("fly"), "invalid choice")


def test_shims_run_the_same_cli(tmp_path):
    for job in JOBS:
        r = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and f"rayrm {job}" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "jobs/score.py", "--config", "configs/score/default.yaml",
                        f"model={tmp_path}/none", "input=x", "output=y"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=60)
    assert_one_line_error(r, "no such export directory")


def test_internal_failures_keep_their_traceback(monkeypatch):
    """Only user errors become one line: anything else propagates (the interpreter prints its traceback)."""
    import rayrm.cli as cli

    monkeypatch.setattr(cli, "init_ray", lambda verbose: None)

    def boom(cfg, args):
        raise RuntimeError("internal")

    monkeypatch.setattr(cli, "_run_train", boom)
    with pytest.raises(RuntimeError, match="internal"):
        cli.main(["train", "--config", str(ROOT / "configs/train/default.yaml"), f"data.path={HH}"])


def test_user_errors_are_found_inside_ray_wrappers():
    from ray.exceptions import RayTaskError

    cause = BadRowError("rows.jsonl:line 3: missing field 'chosen'")
    wrapped = RayTaskError("read_unit", "Traceback (most recent call last): ...", cause).as_instanceof_cause()
    try:
        try:
            raise wrapped
        except Exception as e:
            raise RuntimeError("Ray Data failed") from e
    except RuntimeError as outer:
        found = user_error(outer)
    assert found is cause and str(found) == "rows.jsonl:line 3: missing field 'chosen'"
    assert user_error(RuntimeError("no user error here")) is None
    assert user_error(KeyError("x")) is None


@pytest.mark.integration
def test_score_progress_and_bad_row_in_a_ray_task(tiny_export, rollouts, tmp_path):
    """Scoring prints progress as blocks finish; a bad row found inside a Ray Data task is still one line."""
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rollouts))
    r = rayrm("score", "--config", "configs/score/default.yaml", f"model={tiny_export}", f"input={good}",
              f"output={tmp_path / 'out'}", "block_rows=16", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    final = [ln for ln in r.stdout.splitlines() if ln.startswith("[rayrm.score] scored ")][-1]
    assert f"scored {len(rollouts)}/{len(rollouts)} rows (100%)" in final and "rows/s, ETA" in final
    assert "Total Progress" not in r.stdout + r.stderr  # Ray Data's bars are off without --verbose
    assert f"best-of-N ({len(rollouts) // 2} prompts)" in r.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rollouts[0]) + "\n" + json.dumps({**rollouts[1], "completion": None}) + "\n")
    assert_one_line_error(
        rayrm("score", "--config", "configs/score/default.yaml", f"model={tiny_export}", f"input={bad}",
              f"output={tmp_path / 'bad_out'}", timeout=600),
        f"{bad}:row 2: field 'completion' is missing or null")
    assert not (tmp_path / "bad_out" / "_SUCCESS.json").exists()


def test_every_schema_key_has_a_meaning():
    from rayrm.config import describe

    for job in JOBS:
        from rayrm.cli import _schema

        missing = [k for k, _, meaning in describe(_schema(job)) if not meaning]
        assert not missing, (job, missing)
    assert len(config_keys(TrainConfig)) == len(describe(TrainConfig))
