"""Exceptions whose messages are meant for people; the CLI prints them without a traceback."""


class OdenetsError(Exception):
    """Base class of odenets' own errors."""


class UnknownNameError(OdenetsError, KeyError):
    """A name is not in its registry (model, attack, preset, paper table); the message lists
    the known names or suggests close ones."""


class DataError(OdenetsError, ValueError):
    """A data file or folder is missing, corrupt, or not in the expected layout."""


class CheckpointError(OdenetsError, ValueError):
    """A checkpoint or run folder is missing, corrupt, or does not match the request."""


class DivergenceError(OdenetsError, RuntimeError):
    """Training produced a non-finite loss."""
