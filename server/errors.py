"""Errors whose message is meant for the caller (an agent or a person), not a traceback."""


class RiftError(ValueError):
    """Bad input or a state the caller can fix; the message names what is wrong."""


class NotFoundError(RiftError):
    """A named collection, document or query does not exist."""


class DataDirLockedError(RuntimeError):
    """Another rift process holds the data directory."""
