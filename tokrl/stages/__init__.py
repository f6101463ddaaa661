"""The stages of a run and the data that flows between them (ARCHITECTURE.md):

    collect(step) -> RolloutBatch        collect.py   prompts, replay prefixes, sampling, rewards, groups
    select(batch, ...) -> Selection      select.py    token selection, global counts, LossRows (+ packing)
    PolicyUpdate.apply(...) -> UpdateResult  update.py  loss forward/backward, gradient sum, clipping, AdamW
    step_record(...) -> dict             record.py    the step's metrics record
and the supervised warm start (warm_start.py) and evaluation (evaluate.py).

Layer: imports tokrl.config, the components (models, sampler, algorithms, tasks), tokrl.infra and tokrl_kernels;
never run management (tokrl.run) nor the trainer, which composes the stages.
"""
