"""Server-side pretraining: denoising autoencoder (the method) or supervised (the oracle)."""

from fedticket.pretrain.noise import NOISES
from fedticket.pretrain.server import ServerLog, ServerTrainer

__all__ = ["NOISES", "ServerLog", "ServerTrainer"]
