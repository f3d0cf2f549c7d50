"""Errors the CLI reports on one line: `UserError` (exit 2) and `TrainingFault` (exit 1)."""


class UserError(Exception):
    """Bad input from the user: a flag, config key, path or file."""


class TrainingFault(Exception):
    """A run that stopped because it could not train on, such as a non-finite loss with
    `train.on_nonfinite=stop`; what was saved before the fault is intact."""
