"""Training and evaluation engine: configs and presets, the training loop, evaluation, checkpoints.

``train(make_config("quick"))`` trains; ``train(resume_config(run_dir), resume=run_dir)`` continues a run.
"""
from .config import PRESETS, TrainConfig, make_config
from .evaluate import EvalResult, evaluate
from .trainer import NonFiniteLossError, resume_config, train

__all__ = ["PRESETS", "EvalResult", "NonFiniteLossError", "TrainConfig", "evaluate", "make_config", "resume_config",
           "train"]
