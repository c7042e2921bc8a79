"""The Fashion-MNIST study: PATNet-T0 against timm's FasterNet-T0, with an ablation of each PAT block.

:mod:`.plan` says what is trained (variants, recipe, seeds, the tuning grid); :mod:`.runner` trains what is
missing (finished runs skipped, unfinished ones resumed), measures params, MACs and single-thread latency of
the deploy forms in alternation, and writes the report that :mod:`.report` composes (``results.json``,
``results.md``, ``accuracy_vs_latency.png``).
"""
from .plan import (
                   BASELINE,
                   HEADLINE,
                   PATNET,
                   PLANS,
                   RECIPE,
                   TUNING,
                   VARIANTS,
                   Plan,
                   Run,
                   Tuning,
                   Variant,
                   make_run,
                   plan_runs,
                   setting_name,
                   subset_dir,
                   tuning_runs,
)
from .report import estimate_full_s, findings, to_markdown, tuning_markdown
from .runner import run_study, run_tuning, saved_state, train_all

__all__ = ["BASELINE", "HEADLINE", "PATNET", "PLANS", "RECIPE", "TUNING", "VARIANTS", "Plan", "Run", "Tuning",
           "Variant", "estimate_full_s", "findings", "make_run", "plan_runs", "run_study", "run_tuning",
           "saved_state", "setting_name", "subset_dir", "to_markdown", "train_all", "tuning_markdown",
           "tuning_runs"]
