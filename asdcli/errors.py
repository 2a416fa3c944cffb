"""Typed errors. Library code raises these with one actionable sentence; the CLI renders them
once as ``Error: ...`` on stderr with exit code 1."""


class AsdError(Exception):
    """Base class of every error shown to the user without a traceback."""


class ConfigError(AsdError):
    """An option or configuration value is invalid or contradictory."""


class DataError(AsdError):
    """The dataset layout or a file name is not what a stage needs."""


class AudioError(AsdError):
    """An audio file cannot be read or is unusable (corrupt, empty, NaN, too short)."""


class ArtifactNotFound(AsdError):
    """An input artifact or checkpoint does not exist."""


class ArtifactError(AsdError):
    """An artifact or checkpoint exists but is corrupt, truncated or of the wrong kind."""


class ArtifactMismatch(AsdError):
    """Two artifacts do not belong together (dimension, front-end or checkpoint differ)."""


class TrainingError(AsdError):
    """Training cannot go on (the loss or a weight became NaN or Inf)."""


class AsdWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI shows each one as
    one ``Warning: ...`` line on stderr (``python -W error::asdcli.errors.AsdWarning`` makes it fatal)."""
