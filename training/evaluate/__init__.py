"""Offline evaluation of detection quality through the service's own scoring and alert path.

``evaluate("skab", path)`` runs the published SKAB protocol; ``evaluate("generic", path)`` a
``train/`` + ``test/`` directory of your own labelled plant data. See
:mod:`training.evaluate.protocols` and :mod:`training.evaluate.runner` for the exact rules.
"""

from training.evaluate.protocols import (
    PROTOCOLS,
    AlertOptions,
    EvaluationResult,
    GenericOptions,
    ModelOptions,
    evaluate,
)

__all__ = [
    "PROTOCOLS",
    "AlertOptions",
    "EvaluationResult",
    "GenericOptions",
    "ModelOptions",
    "evaluate",
]
