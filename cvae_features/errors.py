"""The toolkit's exceptions.

Every error the library raises on purpose derives from :class:`CvaeError`, and
each subclass also derives from the matching builtin, so callers may catch
either ``CvaeError`` or, say, ``ValueError``. The CLI turns any ``CvaeError``
into a one-line message and a non-zero exit.
"""


class CvaeError(Exception):
    """Base class of every error raised on purpose by cvae_features."""


class ConfigError(CvaeError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class SourceNotFoundError(CvaeError, FileNotFoundError):
    """An image source (folder, manifest, data set files) does not exist."""


class DataError(CvaeError, ValueError):
    """A source exists but holds nothing usable (empty folder, no decodable image...)."""


class DecodeError(CvaeError, ValueError):
    """One image could not be decoded; ``str(err)`` is the reason recorded for it."""


class StoreError(CvaeError, ValueError):
    """A feature store is missing, not a cvae store, too new, incomplete or incompatible."""


class StoreNoSpaceError(StoreError):
    """The disk holding a feature store is full; what was committed is kept and can be resumed."""


class ModelError(CvaeError, ValueError):
    """A model file or run directory cannot be loaded or does not fit the request."""


class TrainingError(CvaeError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


class LostProcessError(TrainingError):
    """A data-parallel training process lost the others (one stopped or was killed); every survivor says so."""


class IndexMismatchError(StoreError):
    """A search index kept beside a store no longer matches it (the store changed since it was built)."""


class EngineError(CvaeError, RuntimeError):
    """The engine running an extraction failed (Ray workers lost beyond their retries, actors that cannot start)."""


class MissingExtraError(CvaeError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""
