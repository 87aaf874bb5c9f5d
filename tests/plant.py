"""The simulated plant that the integration tests train on and monitor.

Every stream a test monitors is the *same plant* (``plant_seed``) as the one the bundle was
trained on, on another day (its own ``seed``), as a real monitor watches the machines it learned.
"""

from __future__ import annotations

#: 3 pumps and a compressor; their physical parameters come from plant_seed.
PLANT = {"n_pumps": 3, "n_compressors": 1, "plant_seed": 11}
PLANT_WINDOW = 32
