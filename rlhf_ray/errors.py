"""Exceptions for problems the user can fix (bad config, data, checkpoint, request).

The CLI reports any :class:`UserError` as one line on stderr and exits with 2.
"""


class UserError(ValueError):
    """Input the user controls is wrong; the message names what and where."""


class DataError(UserError):
    """A data file is missing, malformed, or yields nothing after filtering."""


class CheckpointError(UserError):
    """A checkpoint directory is incomplete, tampered with, or incompatible."""
