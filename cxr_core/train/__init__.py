"""Training: configuration, the trainer, losses, sampling, cross-validation and detached jobs."""

from cxr_core._face import lazy

__getattr__, __all__ = lazy(__name__, {
    "TrainConfig": "cxr_core.train.config",
    "ConfigError": "cxr_core.train.config",
    "LOSSES": "cxr_core.train.config",
    "SAMPLERS": "cxr_core.train.config",
    "SCHEDULERS": "cxr_core.train.config",
    "load_config": "cxr_core.train.config",
    "read_run_config": "cxr_core.train.config",
    "write_run_config": "cxr_core.train.config",
    "run_training": "cxr_core.train.runner",
    "run_crossval": "cxr_core.train.crossval",
    "create_run": "cxr_core.train.jobs",
    "start_job": "cxr_core.train.jobs:start",
    "launch_job": "cxr_core.train.jobs:launch",
    "stop_job": "cxr_core.train.jobs:stop",
    "resume_job": "cxr_core.train.jobs:resume",
    "JobError": "cxr_core.train.jobs",
})
