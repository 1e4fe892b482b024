"""The exceptions regidx raises on purpose; the CLI turns each into one line and an exit code."""


class RegidxError(Exception):
    """Base class: a problem we understand and can explain in one line."""

    exit_code = 2


class ConfigError(RegidxError):
    """The registry configuration is missing, malformed or unsupported."""


class InvalidDigest(RegidxError):
    """A digest (in a link file, a path or a manifest) is not a valid one."""


class ManifestError(RegidxError):
    """A manifest cannot be parsed or has a media type we do not know."""


class StorageError(RegidxError):
    """The storage tree is missing, unreadable or not what the layout says."""


class IndexError_(RegidxError):
    """The index is missing, untrusted, locked or of an unknown schema."""


class UsageError(RegidxError):
    """A command was asked to do something that does not make sense."""
