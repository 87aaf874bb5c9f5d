"""plantwatch offline tools: the plant simulator and the autoencoder trainer.

Importing this package does not import torch; only the trainer modules do.
"""
