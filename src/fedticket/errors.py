"""Errors the CLI turns into a one-line message and an exit status."""


class FedticketError(Exception):
    """Bad input: the message names the problem and the fix. Exit status 2."""

    exit_code = 2


class ConfigError(FedticketError):
    """A config value or key that does not exist or is out of range."""


class DataError(FedticketError):
    """A data file that is missing, corrupt or of the wrong shape."""


class DivergenceError(FedticketError):
    """Training produced a non-finite loss. Exit status 1."""

    exit_code = 1
