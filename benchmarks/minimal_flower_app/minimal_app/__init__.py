"""A minimal Flower PyTorch app, the yardstick of fedticket's Flower round time."""
