"""Errors the CLI turns into a one-line message and an exit status.

Two kinds, kept apart so that a script can tell them by the status:

* :class:`FedticketError`: the user's input is wrong (a config, a file, an argument,
  an environment variable). Exit status 2. The message names the input and the fix.
* :class:`MachineError`: the machine or a process fedticket depends on failed (a full
  disk, a read-only folder, a Flower process that died). Exit status 1. A run keeps
  its last checkpoint; the same command resumes once the cause is gone.

Anything else that reaches the command line is a bug in fedticket; ``fedticket.cli``
says so and writes its traceback to a log file.
"""


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


class MachineError(Exception):
    """The machine or a process we depend on failed, not the input. Exit status 1."""

    exit_code = 1


class FedticketWarning(UserWarning):
    """Something fedticket does differently from what was asked, and goes on (a part of
    a model the structured step cannot cut, left to magnitude pruning). The command line
    prints it as one line, ``fedticket: warning: ...``."""
