"""Checking a whole config, once, before any weights load (`load_config` calls `validate_config`).

Each section checks its own values (tokrl.config.sections); here are the names the registries know (algorithm,
task, sampler, reporters) and what needs two sections or the machine: the kernel implementation on the run's
device, the checkpoint folder to resume, the output directory's placeholders. The config sits above the
registries it checks names against: it imports them, they never import it.
"""

from __future__ import annotations

from pathlib import Path

from tokrl.algorithms import available_algorithms
from tokrl.config.schema import TrainConfig
from tokrl.infra.distributed import resolve_device
from tokrl.infra.registry import unknown_choice
from tokrl.infra.reporting import NO_REPORTER, available_reporters
from tokrl.infra.validation import require
from tokrl.sampler import sampler_names
from tokrl.tasks import available_tasks
from tokrl_kernels import resolve_impl


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the field (what was expected, what came) for the first problem found."""
    for kind, name, known in (
        ("algorithm", config.algorithm, available_algorithms()),
        ("task", config.task, available_tasks()),
    ):
        if name not in known:
            raise unknown_choice(kind, name, known)
    config.check()
    for name in config.report_to:
        if name not in available_reporters():
            raise unknown_choice("report_to", name, available_reporters())
    require(
        NO_REPORTER not in config.report_to or set(config.report_to) == {NO_REPORTER},
        f"report_to: 'none' cannot be combined with a reporter, got {','.join(config.report_to)}",
    )
    validate_impl(config.impl, config.device)
    if isinstance(config.resume, str) and not Path(config.resume).is_dir():
        raise ValueError(
            f"resume: {config.resume!r} is not a checkpoint directory; pass a checkpoint-N folder or --resume alone "
            "for the newest checkpoint in output_dir"
        )
    if config.generation.sampler not in sampler_names():
        raise unknown_choice("sampler", config.generation.sampler, sampler_names())
    try:
        config.resolved_output_dir()
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"output_dir: bad placeholder in {config.output_dir!r}: {err}") from None


def validate_impl(impl: str, device: str) -> None:
    """The kernels' own rule (`tokrl_kernels.resolve_impl`) on the run's device: impl='triton' needs the triton
    package and a CUDA device, or TRITON_INTERPRET=1 on the CPU."""
    try:
        resolve_impl(impl, resolve_device(device))
    except RuntimeError as err:
        raise ValueError(f"{err}") from None
