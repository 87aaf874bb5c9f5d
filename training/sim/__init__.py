"""The plant simulator's parts; import the public API from :mod:`training.simulator`."""
