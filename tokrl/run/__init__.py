"""Run management: the output directory, its lock, checkpoints and resume, the metrics file, results, plots,
and the checks made before anything is written.

Layer: imports tokrl.config, the components (models, tasks, sampler, algorithms) and tokrl.infra; never the
stages (tokrl.stages) nor the trainer, which uses both.
"""
