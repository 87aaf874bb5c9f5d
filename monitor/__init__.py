"""plantwatch runtime: the monitor service and the model-bundle contract it owns.

Nothing in this package imports torch or :mod:`training`.
"""

__version__ = "0.1.0"
