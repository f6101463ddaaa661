"""The `tokrl` command (also `python -m tokrl`): train, eval, plot, env.

    tokrl train                                   # the tiny-multiplication preset, CPU, a few minutes
    tokrl train --preset svamp-qwen2-1.5b --algorithm t-spmo --output-dir runs/svamp
    tokrl train --config run.yaml --steps 100 --lora-r 8 --output-dir runs/x
    tokrl train --output-dir runs/x --resume      # continue runs/x with its checkpoint's own config
    tokrl train --output-dir runs/x --resume --steps 200   # extend it (tokrl.run.resume.SAFE_TO_CHANGE)
    tokrl train --resume runs/x/checkpoint-60 --output-dir runs/x2   # continue that checkpoint in a new dir
    tokrl train --output-dir runs/x --overwrite   # replace runs/x once the new run has started
    tokrl eval --adapter outputs/x/checkpoint-60  # its base model and the run's task settings, from the checkpoint
    tokrl eval --model tiny --task multiplication --task-options '{digits_a: 2, digits_b: 1}'
    tokrl plot outputs/tiny-multiplication-{t-spmo,s-grpo,grpo} --out curves.png   # needs tokrl[plot]
    tokrl env                                     # versions and devices, for bug reports

Multi-GPU / multi-node: the same command under a launcher, e.g. `torchrun --nproc_per_node 4 -m tokrl train
...` or `accelerate launch --multi_gpu --num_processes 4 -m tokrl train ...` (see tokrl/infra/distributed.py);
only rank 0 prints and writes.

`train` has one flag per TrainConfig field (`--key-name value` or `--key_name value`, help text from the
field's metadata); values are parsed like YAML (`--task-options '{digits_a: 3}'`, `--resume`, `--progress
false`). Configuration errors print one line naming the field and exit with status 2; a started run that
fails for a known cause (non-finite loss, nothing to train, full disk, a reward function that raises or
returns bad values) prints one line and exits with status 1; Ctrl-C exits with status 130 after one line.
`--debug` adds the full traceback (for a reward function: the user's own) above that line.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib.metadata
import json
import logging
import os
import platform
import sys
import traceback
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokrl.config.presets import DEFAULT_PRESET, PRESETS
from tokrl.config.schema import flat_fields

EXIT_CONFIG_ERROR = 2
EXIT_RUN_ERROR = 1
EXIT_INTERRUPTED = 130


def _config_errors() -> tuple[type[Exception], ...]:
    """What a wrong name, path, value, unreadable checkpoint or unreachable model raises (one line, exit 2;
    no traceback)."""
    from tokrl.infra.extras import MissingExtraError
    from tokrl.models.loading import ModelLoadError
    from tokrl.run.checkpoint import CheckpointError

    return (
        ValueError,
        TypeError,
        FileNotFoundError,
        ConnectionError,
        ModelLoadError,
        CheckpointError,
        MissingExtraError,
    )


def _run_errors() -> tuple[type[Exception], ...]:
    """Failures of a started run that have a known cause (one line, exit 1): a non-finite loss, a run that
    trains nothing, a checkpoint that cannot be written (full disk), a reward function's bad output."""
    from tokrl.run.checkpoint import CheckpointError
    from tokrl.run.progress import StalledRunError
    from tokrl.stages.update import NonFiniteLossError
    from tokrl.tasks.base import RewardError

    return (NonFiniteLossError, StalledRunError, CheckpointError, RewardError)


def _fail(args: argparse.Namespace, err: object, code: int = EXIT_CONFIG_ERROR) -> int:
    """One line for `err` (after its traceback under --debug); returns the exit status `code`."""
    if getattr(args, "debug", False) and isinstance(err, BaseException):
        traceback.print_exception(err)
    print(f"tokrl {args.command}: error: {err}", file=sys.stderr)
    return code


def _disk_full(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full_message(err: OSError) -> str:
    where = f" while writing {err.filename}" if err.filename else ""
    return f"no space left on the device{where} ({err.strerror}); free some space and continue with --resume"


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config fields (override the preset and --config)")
    for key, spec in flat_fields().items():
        names = [_flag(key)] + ([f"--{key}"] if "_" in key else [])
        help_text = spec.field.metadata.get("help", "")
        metavar = {int: "N", float: "X", str: "STR"}.get(spec.type, "YAML")
        kwargs: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": help_text, "metavar": metavar}
        if spec.type is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif bool in typing.get_args(spec.type):  # `--resume` alone or `--resume PATH`
            kwargs.update(nargs="?", const="true", metavar="BOOL|PATH")
        group.add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokrl", description="Token-efficient RL for LLM reasoning.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,plot,env}")
    train = sub.add_parser("train", help="RL training (default: the tiny-multiplication preset)", allow_abbrev=False)
    train.add_argument(
        "--preset", default=None, help=f"Named preset: {', '.join(sorted(PRESETS))} (default {DEFAULT_PRESET})."
    )
    train.add_argument("--config", default=None, metavar="FILE", help="YAML config file (flat or nested keys).")
    train.add_argument("--debug", action="store_true", help="Print the full traceback above an error's line.")
    _add_config_flags(train)
    ev = sub.add_parser("eval", help="greedy accuracy@1 of a model on a task split", allow_abbrev=False)
    ev.add_argument(
        "--model",
        default=None,
        help="'tiny', a local model directory or a hub id (default: the base model the --adapter records).",
    )
    ev.add_argument("--adapter", default=None, help="A LoRA adapter directory (e.g. a checkpoint-N folder).")
    ev.add_argument(
        "--task",
        default=None,
        help="Task name (default: the checkpoint's, the warm start's, else the preset's task).",
    )
    ev.add_argument(
        "--task-options",
        default=None,
        help="Task options as YAML, e.g. '{digits_a: 2}', laid over the defaults' options of the same task.",
    )
    ev.add_argument(
        "--preset",
        default=None,
        help=f"Where task defaults come from when no checkpoint or warm start gives them (default {DEFAULT_PRESET}).",
    )
    ev.add_argument("--split", default="test", choices=["train", "test"])
    ev.add_argument("--limit", type=int, default=None, help="Evaluate the first N examples only.")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument(
        "--max-new-tokens", type=int, default=None, help="Default: the run's or preset's value (200 for another task)."
    )
    ev.add_argument("--device", default="auto")
    ev.add_argument("--dtype", default="auto")
    ev.add_argument("--examples", type=int, default=3, help="Print this many (prompt, completion, reward).")
    ev.add_argument("--debug", action="store_true", help="Print the full traceback above an error's line.")
    pl = sub.add_parser("plot", help="learning curves of runs in one PNG (needs tokrl[plot])", allow_abbrev=False)
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="A `tokrl train` output_dir (holds metrics.jsonl).")
    pl.add_argument("--out", required=True, metavar="FILE.png", help="Picture to write (the suffix picks the format).")
    pl.add_argument(
        "--smooth",
        type=int,
        default=0,
        metavar="N",
        help="Moving-average window in steps for per-step curves (0 = about 1/50 of the run, 1 = as logged).",
    )
    pl.add_argument("--debug", action="store_true", help="Print the full traceback above an error's line.")
    sub.add_parser("env", help="print versions and devices (for bug reports)")
    return parser


def _quiet_dependencies() -> None:
    """Progress bars and deprecation chatter of transformers/peft would bury the run's own output."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()  # "Generating train split" for every custom data file
    datasets.logging.set_verbosity(logging.CRITICAL)  # a reader's error is reported once, by tokrl
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("tokrl").setLevel(logging.INFO)


def _unknown_flags(unknown: list[str]) -> str:
    known = [_flag(k) for k in flat_fields()] + ["--preset", "--config", "--debug"]
    flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")] or unknown
    parts = []
    for name in flags:
        close = difflib.get_close_matches(name.replace("_", "-"), known, n=3) if name.startswith("--") else []
        parts.append(name + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return "unrecognized arguments: " + "; ".join(parts)


def cmd_train(args: argparse.Namespace) -> int:
    from tokrl.config.loading import load_config
    from tokrl.run.resume import resume_config
    from tokrl.trainer import Trainer

    # Only the flags the user typed are here (argparse.SUPPRESS): a resume re-applies just these on top of
    # the checkpoint's own config, never the preset's defaults.
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "preset", "config", "debug")}
    try:
        config = load_config(args.preset, args.config, **overrides)  # validated: names, batch arithmetic
        _quiet_dependencies()  # before the resume's and the task's own messages
        config = resume_config(config, args.preset, args.config, overrides)  # --resume: the checkpoint's config
        trainer = Trainer(config)  # task, algorithm, output_dir and resume checks; before any weights load
        trainer.setup()  # model options, lock, warm start, model, LoRA, optimiser, resume
    except _config_errors() as err:
        return _fail(args, err)
    except OSError as err:
        if not _disk_full(err):
            raise
        return _fail(args, _disk_full_message(err), EXIT_RUN_ERROR)
    except KeyboardInterrupt:
        return _fail(args, "interrupted before training started; nothing of this run was kept", EXIT_INTERRUPTED)
    try:
        result = trainer.run()  # from here on an unknown exception is a bug worth a traceback
    except _run_errors() as err:
        return _fail(args, err, EXIT_RUN_ERROR)
    except OSError as err:
        if not _disk_full(err):
            raise
        return _fail(args, _disk_full_message(err), EXIT_RUN_ERROR)
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of the step in progress
        saved = f" the last checkpoint in {trainer.output_dir}" if any(trainer.output_dir.glob("checkpoint-*")) else ""
        how = f"continue from{saved} with --resume" if saved else "no checkpoint was written yet"
        return _fail(args, f"interrupted during step {trainer.step + 1}; {how}", EXIT_INTERRUPTED)
    before, after = result.eval_before, result.eval_after
    if not trainer.launch.is_main:  # rank 0 reports for every process
        return EXIT_INTERRUPTED if result.interrupted else 0
    if result.interrupted:
        print(f"interrupted at step {result.steps}; checkpoint {result.checkpoint}; continue with --resume")
        return EXIT_INTERRUPTED
    delta = f" ({100 * (after - before):+.1f} points)" if before is not None and after is not None else ""
    print(
        f"{config.algorithm} on {config.task}: accuracy {_pct(before)} -> {_pct(after)}{delta} after "
        f"{result.steps} steps, {result.wall_time_s:.0f} s; results in {result.output_dir}/results.json"
    )
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def cmd_eval(args: argparse.Namespace) -> int:
    import yaml

    from tokrl.config.sections import validate_device, validate_model_name
    from tokrl.infra.distributed import resolve_device
    from tokrl.models.adapters import adapter_base_model, check_base_model
    from tokrl.run.eval_defaults import eval_defaults, resolve_task
    from tokrl.stages.evaluate import evaluate

    try:
        options = yaml.safe_load(args.task_options) if args.task_options is not None else None
    except yaml.YAMLError as err:
        return _fail(args, f"task_options: cannot parse {args.task_options!r} as YAML ({_yaml_problem(err)})")
    if options is not None and not isinstance(options, dict):
        return _fail(args, f"task_options: expected a mapping like '{{digits_a: 2}}', got {args.task_options!r}")
    for name in ("limit", "batch_size", "max_new_tokens", "examples"):
        value, least = getattr(args, name), 0 if name == "examples" else 1
        if value is not None and value < least:
            return _fail(args, f"{_flag(name)}: must be >= {least}, got {value}")
    try:
        validate_device(args.device)
        if args.preset is not None and args.preset not in PRESETS:
            raise ValueError(f"preset: unknown {args.preset!r}; expected one of: {', '.join(sorted(PRESETS))}")
        model = args.model
        if args.adapter and Path(args.adapter).expanduser().is_dir():
            base = adapter_base_model(args.adapter)
            if model is not None:
                check_base_model(model, args.adapter)
            model = model or base
        if model is None:
            raise ValueError("model: pass --model (or an --adapter that records its base model)")
        validate_model_name(model)
        defaults = eval_defaults(model, args.adapter, args.preset)
        task, options, max_new_tokens, source = resolve_task(args.task, options, args.max_new_tokens, defaults)
    except _config_errors() as err:
        return _fail(args, err)
    _quiet_dependencies()
    if source:
        logging.getLogger("tokrl").info(
            "eval: %s on task %s %s, max_new_tokens %d (defaults from %s)", model, task, options, max_new_tokens, source
        )
    try:
        result = evaluate(
            model,
            task,
            task_options=options,
            adapter=args.adapter,
            split=args.split,
            limit=args.limit,
            batch_size=args.batch_size,
            max_new_tokens=max_new_tokens,
            device=str(resolve_device(args.device)),
            dtype=args.dtype,
            examples=args.examples,
        )
    except _config_errors() as err:
        return _fail(args, err)
    except _run_errors() as err:
        return _fail(args, err, EXIT_RUN_ERROR)
    for prompt, completion, reward in result.pop("examples", []):
        print(f"  {prompt!r} -> {completion!r} (reward {reward})")
    print(json.dumps(result))
    return 0


def _yaml_problem(err: Exception) -> str:
    """The first line of a YAML error, with its line and column."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def cmd_plot(args: argparse.Namespace) -> int:
    from tokrl.run.plot import plot_runs

    try:
        out = plot_runs(args.runs, args.out, smooth=args.smooth)
    except _config_errors() as err:
        return _fail(args, err)
    except OSError as err:  # a read-only or full filesystem, a folder in the way
        return _fail(args, f"out: cannot write {args.out!r} ({err.strerror or err})")
    print(f"wrote {out}")
    return 0


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_env(args: argparse.Namespace) -> int:
    import torch

    lines = [
        f"python        {platform.python_version()} ({sys.executable})",
        f"platform      {platform.platform()}",
    ]
    for name in ("torch", "triton", "transformers", "peft", "datasets", "tokrl"):
        lines.append(f"{name:<13} {_version(name)}")
    lines.append(f"cuda (torch)  {torch.version.cuda or 'none'}")
    lines.append(f"cpu           {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(
                f"cuda:{i}        {props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}"
            )
    else:
        lines.append("cuda          not available")
    env = {k: v for k, v in os.environ.items() if k.startswith(("TOKRL_", "TRITON_INTERPRET", "CUDA_VISIBLE"))}
    for key, value in sorted(env.items()):
        lines.append(f"env           {key}={value}")
    print("\n".join(lines))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "env": cmd_env}


def main(argv: Sequence[str] | None = None) -> int:
    # `python -m tokrl` puts the working directory on sys.path, the `tokrl` script does not: add it so a
    # reward module next to the user ("my_rewards:score") imports the same way from both.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG_ERROR
    if unknown:
        print(f"tokrl {args.command}: error: {_unknown_flags(unknown)}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return COMMANDS[args.command](args)
