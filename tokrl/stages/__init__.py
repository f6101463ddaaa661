"""The stages of a run and the data that flows between them.

Layer: imports tokrl.config, the components (models, sampler, algorithms, tasks), tokrl.infra and tokrl_kernels;
never run management (tokrl.run) nor the trainer, which composes the stages.
"""
