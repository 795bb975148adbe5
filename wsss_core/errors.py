"""User-facing errors.

Anything a person can fix (a bad path, a bad key, a corrupt image) raises a subclass of
:class:`WsssError` with a message that names the file, key or image and says what is valid.
The ``wsss`` command prints such errors as one line and exits with status 2 instead of a traceback.
"""


class WsssError(Exception):
    """An error the user can fix; its message is shown as is."""


class ConfigError(WsssError):
    """A config or sweep file has an unknown key, a wrong type or an invalid value."""


class DataError(WsssError):
    """A dataset root, split file, image or mask is missing or unusable."""


class CamStoreError(WsssError):
    """A CAM store is missing images, has malformed maps or disagrees with its ground truth."""


class TrainingError(WsssError):
    """A training run failed in a way the user must look at (e.g. a non-finite loss)."""
