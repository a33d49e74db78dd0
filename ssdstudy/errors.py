"""Errors that a user can fix, reported by the command line as one clear line."""


class UserError(Exception):
    """A problem with the user's input (a file, a parameter, a path), not a bug.

    The message must name the file and the field or line at fault.
    """


class DataError(UserError):
    """A bad dataset file: malformed annotation, unknown class, corrupt image..."""

    def __init__(self, path, message: str):
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class ConfigError(UserError):
    """A bad parameter file: unknown key, wrong type, value out of range."""
