"""The error type for mistakes a user can fix; the CLI prints it on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user: a flag, config key, path or file."""
