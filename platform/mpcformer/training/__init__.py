"""Training: teacher fine-tuning, MPCFormer two-stage distillation and its baselines.

Library entry points (what the CLI jobs and the sweep scheduler call)::

    from mpcformer.training import FinetuneConfig, DistillConfig, run_finetune, run_distill
    metrics = run_finetune(FinetuneConfig(model="minilm", data={"data_dir": "data/sst2"}))
    metrics = run_distill(DistillConfig(teacher=metrics["checkpoint"], combo="quad+2quad"))

Names resolve lazily so that importing this package (e.g. for the CLI parser) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FinetuneConfig", "DistillConfig", "StageConfig", "OptimConfig", "run_finetune", "run_distill"]

_WHERE = {
    "FinetuneConfig": "mpcformer.training.config",
    "DistillConfig": "mpcformer.training.config",
    "StageConfig": "mpcformer.training.config",
    "OptimConfig": "mpcformer.training.config",
    "run_finetune": "mpcformer.training.finetune",
    "run_distill": "mpcformer.training.distill",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mpcformer.training' has no attribute '{name}'")
    return getattr(importlib.import_module(_WHERE[name]), name)
