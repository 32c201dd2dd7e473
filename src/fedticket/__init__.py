"""fedticket: server-side unsupervised lottery tickets for cheap federated learning."""

__version__ = "0.1.0"

__all__ = ["Federated", "Ticket", "federate", "find_ticket"]


def __getattr__(name: str):  # noqa: ANN202  (lazy: `fedticket --help` need not import torch)
    if name in __all__:
        from fedticket import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
