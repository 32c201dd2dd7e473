"""fedticket: server-side unsupervised lottery tickets for cheap federated learning."""

__version__ = "0.1.0"
