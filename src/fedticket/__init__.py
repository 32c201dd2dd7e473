"""fedticket: server-side unsupervised lottery tickets for cheap federated learning."""

from fedticket._version import __version__

__all__ = ["Federated", "Ticket", "__version__", "federate", "find_ticket"]


def __getattr__(name: str):  # noqa: ANN202  (lazy: `fedticket --help` need not import torch)
    if name in __all__ and name != "__version__":
        from fedticket import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
