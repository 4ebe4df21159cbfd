"""Errors a user can cause. The CLI prints their message and exits non-zero, no traceback."""


class VQVAEError(Exception):
    """Base class: bad input that the user can fix."""


class ConfigError(VQVAEError):
    pass


class DataError(VQVAEError):
    pass


class CheckpointError(VQVAEError):
    pass


class TrainingError(VQVAEError):
    pass


class OutputError(VQVAEError):
    """A file could not be written (full disk, no permission) or an output path is not allowed."""


class ExportError(VQVAEError):
    pass
