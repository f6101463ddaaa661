"""Run management: the output directory, its lock, checkpoints and resume, the metrics file, results.json,
plots, the stall watch, the warm start's cache, and the checks made before anything is written.

Layer: above the stages. Imports tokrl.stages (the warm start it caches), tokrl.config, the components (models,
tasks, sampler, algorithms) and tokrl.infra; never the trainer, which uses it. See ARCHITECTURE.md.
"""
