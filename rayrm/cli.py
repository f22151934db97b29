"""`rayrm JOB --config FILE [dotted.key=value ...]`: the one command line of every rayrm job.

    rayrm --help                      the jobs
    rayrm train --help                the job's config keys, defaults and meanings
    rayrm train --config configs/train/default.yaml optim.lr=1e-4
    rayrm score --config configs/score/default.yaml model=/tmp/rayrm-default/final input=rollouts.jsonl output=/tmp/scored
    rayrm train --config configs/train/default.yaml --print-config     the resolved config, nothing run

Bad input (an unknown key, a bad value, a missing file or export, a malformed data row) ends with one line
`rayrm: error: ...` on stderr and exit code 2; an internal failure keeps its traceback. `jobs/*.py` call `main` too,
so `ray job submit --working-dir . -- python jobs/train.py --config ...` runs the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NoReturn

from rayrm.errors import UserError

USAGE_EXIT = 2  # bad input or usage; the monitor also uses it for "could not judge"


@dataclass(frozen=True)
class Job:
    summary: str  # one line for `rayrm --help`
    schema: str  # config class name in rayrm.config
    run: str  # function name in this module that runs the job and returns the exit code
    example: str


JOBS: dict[str, Job] = {
    "train": Job("train a reward model with Ray Train + DeepSpeed, evaluate it and export it", "TrainConfig",
                 "_run_train", "rayrm train --config configs/train/default.yaml optim.lr=1e-4"),
    "score": Job("score rollouts offline with Ray Data (exactly once, resumable) and pick best-of-N", "ScoreConfig",
                 "_run_score", "rayrm score --config configs/score/default.yaml model=/tmp/rayrm-default/final "
                               "input='/data/rollouts/*.jsonl' output=/tmp/scored"),
    "eval": Job("evaluate reward models on a preference suite (RewardBench formats): accuracy per subset, A/B",
                "EvalConfig", "_run_eval", "rayrm eval --config configs/eval/default.yaml "
                                           "model=/tmp/rayrm-default/final input=/data/reward-bench.parquet "
                                           "output=/tmp/eval"),
    "serve": Job("serve rewards over HTTP with Ray Serve (batched, autoscaled)", "ServeConfig",
                 "_run_serve", "rayrm serve --config configs/serve/default.yaml model=/tmp/rayrm-default/final"),
    "judge": Job("judge preference pairs with a local causal LM, both orders averaged (Ray Data)", "JudgeConfig",
                 "_run_judge", "rayrm judge --config configs/judge/default.yaml model=Qwen/Qwen3-0.6B "
                               "input=/data/pairs.jsonl output=/tmp/judged"),
    "monitor": Job("check an export on a canary preference set: accuracy, calibration, drift (exit 0/1/2)",
                   "MonitorConfig", "_run_monitor", "rayrm monitor --config configs/monitor/default.yaml "
                                                    "model=/tmp/rayrm-default/final canary=/data/canary.jsonl "
                                                    "output=/tmp/monitor"),
}


# ---------------------------------------------------------------- argument parsing
class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other rayrm user error."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see `{self.prog} --help`)")


def fail(message: str) -> NoReturn:
    """A user error: one line on stderr, exit code 2."""
    print(f"rayrm: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(USAGE_EXIT)


def _schema(job: str) -> type:
    import rayrm.config

    return getattr(rayrm.config, JOBS[job].schema)


def keys_help(job: str) -> str:
    """The job's config keys: `key  default  meaning`, one per line, nested sections dotted."""
    from rayrm.config import describe

    rows = describe(_schema(job))
    width = max(len(k) for k, _, _ in rows)
    dwidth = min(28, max(len(d) for _, d, _ in rows))
    lines = []
    for key, default, meaning in rows:
        if len(default) > dwidth:
            lines.append(f"  {key:<{width}}  {default}")
            lines.append(f"  {'':<{width}}  {'':<{dwidth}}  {meaning}")
        else:
            lines.append(f"  {key:<{width}}  {default:<{dwidth}}  {meaning}")
    return "\n".join(lines)


def _parser() -> _Parser:
    top = _Parser(
        prog="rayrm",
        description="Train, score, evaluate, serve, judge and monitor reward models for RLHF on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="`rayrm JOB --help` lists a job's config keys. Examples:\n"
        + "\n".join(f"  {j.example}" for j in JOBS.values()),
    )
    sub = top.add_subparsers(dest="job", metavar="JOB", title="jobs", parser_class=_Parser)
    for name, j in JOBS.items():
        p = sub.add_parser(
            name, help=j.summary, formatter_class=argparse.RawDescriptionHelpFormatter,
            usage=f"rayrm {name} [--config FILE] [dotted.key=value ...] [--print-config] [--verbose]",
            description=f"{j.summary[0].upper()}{j.summary[1:]}.\n\n  {j.example}",
            epilog="config keys (set in the YAML file or as key=value; defaults shown):\n" + keys_help(name),
        )
        p.add_argument("--config", metavar="FILE", help="YAML config (configs/...); without it the defaults below apply")
        p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
        p.add_argument("--verbose", action="store_true", help="keep Ray's own INFO logs, worker logs and progress bars")
    return top


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """-> (options, overrides). Arguments of the form key=value are config overrides, anywhere on the line."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.job is None:
        parser.print_help()
        raise SystemExit(USAGE_EXIT)
    bad = [a for a in rest if a.startswith("-") or "=" not in a]
    if bad:
        fail(f"unrecognized argument {bad[0]!r}: config values go as key=value (see `rayrm {args.job} --help`)")
    return args, rest


# ---------------------------------------------------------------- quiet Ray
@contextlib.contextmanager
def _quiet_stderr(on: bool) -> Iterator[None]:
    """File descriptor 2 to /dev/null inside the block (C++ writes there, not to sys.stderr); errors still raise."""
    if not on:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def init_ray(verbose: bool) -> None:
    """Join the Ray cluster (`ray job submit`, RAY_ADDRESS) or start a local one; unless `verbose`, keep Ray's own
    INFO lines, worker logs (they stay in Ray's log files) and Ray Data progress bars off the terminal, so rayrm's
    progress lines are what a person reads."""
    import ray

    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # the C++ core's notices on stderr
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    if not ray.is_initialized():
        with _quiet_stderr(not verbose):  # the C++ core announces its log level on stderr while it starts
            ray.init(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.WARNING)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = verbose
    if not verbose:
        # Ray Data logs to its own console handler (and to ray-data.log, left as it is). Its errors surface as the
        # job's exception, so the console handler keeps only what is critical.
        for h in logging.getLogger("ray.data").handlers:
            if "File" not in type(h).__name__:
                h.setLevel(logging.CRITICAL)
        logging.getLogger("ray.train").setLevel(logging.WARNING)  # ray.serve resets its own level on import: _run_serve


# ---------------------------------------------------------------- the jobs
def _run_train(cfg: Any, args: argparse.Namespace) -> int:
    from rayrm.train import run_training

    m = run_training(cfg)
    export = os.path.join(os.path.abspath(cfg.output_dir), "final")
    print(train_summary(m, export), flush=True)
    return 0


def train_summary(m: dict[str, Any], export: str) -> str:
    """The end of a training run: held-out metrics, the export, and the commands that use it."""
    lines = [f"rayrm: trained {m.get('step', 0)} steps in {m.get('wall_s', 0):.0f} s "
             f"({m.get('train_pairs_per_s', 0):.1f} pairs/s, train loss {m.get('train_loss', float('nan')):.4f})"]
    held = [f"{k[5:]} {v:.4g}" for k, v in m.items()
            if k.startswith("eval_") and isinstance(v, (int, float)) and k not in ("eval_num_pairs", "eval_pairs")]
    n = m.get("eval_pairs", m.get("eval_num_pairs"))
    lines.append(f"held-out ({int(n) if n is not None else '?'} rows): " + ", ".join(held))
    if m.get("truncated_train") or m.get("truncated_eval") or m.get("skipped_rows"):
        lines.append(f"data: {m.get('train_pairs', 0)} train / {m.get('eval_pairs', 0)} held-out rows, "
                     f"{m.get('truncated_train', 0) + m.get('truncated_eval', 0)} truncated, "
                     f"{m.get('skipped_rows', 0)} skipped")
    lines += [
        f"export: {export}  (rayrm.json, report/)",
        "next:",
        f"  rayrm score --config configs/score/default.yaml model={export} input=ROLLOUTS.jsonl output=SCORED_DIR",
        f"  rayrm serve --config configs/serve/default.yaml model={export}",
    ]
    return "\n".join(lines)


def _run_score(cfg: Any, args: argparse.Namespace) -> int:
    from rayrm.score import run_scoring

    s = run_scoring(cfg)
    print(f"rayrm: scored {s['rows_scored_this_run']:,} rows ({s['rows_resumed']:,} already done) in "
          f"{s['wall_s']:.0f} s: {s['rows_per_s']:.1f} rows/s, {s['tokens_per_s']:,.0f} tokens/s; "
          f"{s['truncated_rows']:,} truncated, {s['bad_rows_total']:,} bad", flush=True)
    print(f"rewards: {os.path.join(cfg.output, 'rewards')}/"
          + (f"  best-of-N ({s['best_of_n_prompts']:,} prompts): {os.path.join(cfg.output, 'best_of_n')}/"
             if "best_of_n_prompts" in s else "")
          + f"  summary: {os.path.join(cfg.output, '_SUCCESS.json')}", flush=True)
    return 0


def _run_eval(cfg: Any, args: argparse.Namespace) -> int:
    from rayrm.eval import run_eval, summary_markdown

    results = run_eval(cfg)
    print(summary_markdown(results), end="", flush=True)
    print(f"results: {os.path.join(cfg.output, 'results.json')}  rows: {os.path.join(cfg.output, 'scores.parquet')}",
          flush=True)
    return 1 if results["gate_failures"] else 0


def _run_serve(cfg: Any, args: argparse.Namespace) -> int:
    from rayrm.serve import run_server  # imports ray.serve, which sets its own logger to INFO

    if not args.verbose:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)

    run_server(cfg, verbose=args.verbose)
    return 0


def _run_judge(cfg: Any, args: argparse.Namespace) -> int:
    from rayrm.judge import run_judging

    s = run_judging(cfg)
    print(f"rayrm: judged {s['pairs']:,} pairs ({s['a_preferred']:,} prefer A) -> {s['output']}", flush=True)
    return 0


def _run_monitor(cfg: Any, args: argparse.Namespace) -> int:
    from rayrm.monitor import run_monitor

    try:
        report = run_monitor(cfg)
    except UserError:
        raise
    except Exception:  # internal failure: keep the traceback, and exit 2 ("could not judge"), never 1 ("alert")
        import traceback

        traceback.print_exc()
        return USAGE_EXIT
    return 0 if report["passed"] else 1


def preflight(job: str, cfg: Any) -> None:
    """Checks that need no Ray: the export and the input files exist, before a cluster is started or joined."""
    if job in ("score", "serve", "monitor"):
        from rayrm.model import check_export

        check_export(cfg.model)
    if job in ("train", "judge"):
        from rayrm.model import resolve_model_path

        for name in (cfg.model, cfg.tokenizer):
            if name:
                resolve_model_path(name)  # a local path that is not there; hub ids are checked when loaded
    if job == "train":
        from rayrm.data import check_data_path

        for path in (cfg.data.path, cfg.data.eval_path):
            if path:
                check_data_path(path)
    if job == "monitor":
        from rayrm.data import check_data_path

        check_data_path(cfg.canary)
    if job in ("score", "judge", "eval"):
        from rayrm.score import list_input_files

        list_input_files(cfg.input)
    if job == "eval":
        from rayrm.model import check_export

        for model in cfg.model:
            check_export(model)


# ---------------------------------------------------------------- entry point
def user_error(e: BaseException) -> UserError | None:
    """The UserError behind `e`, also when Ray wrapped it (task/actor errors, Ray Train and Ray Data failures)."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, UserError):
            cause = getattr(x, "cause", None)  # a RayTaskError made an instance of its cause: the message is a trace
            return cause if isinstance(cause, UserError) else x
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
        todo += [v for v in (getattr(x, "worker_failures", None) or {}).values() if isinstance(v, BaseException)]
        todo += [v for v in getattr(x, "exceptions", None) or [] if isinstance(v, BaseException)]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run `rayrm ARGS` and return its exit code (0 ok; 2 bad input or usage; 1 a monitor alert or failed eval gate)."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # --help, usage and user errors (already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else USAGE_EXIT)


def _main(argv: list[str]) -> int:
    args, overrides = parse(argv)
    if not args.verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' weight-loading bars (read at import)
    from rayrm.config import load_config, to_dict

    try:
        cfg = load_config(args.config, overrides, _schema(args.job))
        if args.print_config:
            import yaml

            print(yaml.safe_dump(to_dict(cfg), sort_keys=False, width=120), end="")
            return 0
        preflight(args.job, cfg)
        init_ray(args.verbose)
        run: Callable[[Any, argparse.Namespace], int] = globals()[JOBS[args.job].run]
        return run(cfg, args)
    except KeyboardInterrupt:
        print("rayrm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        ue = user_error(e)
        if ue is None:
            raise
        lines = str(ue).strip().splitlines() or [type(ue).__name__]
        fail(lines[0])  # rayrm's messages are one line; Ray Data appends its retry advice on the next


if __name__ == "__main__":
    sys.exit(main())
