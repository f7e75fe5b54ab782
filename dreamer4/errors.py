"""User-facing errors: each carries one line that names the setting or file and the fix.

The root, `UserError`, lives in data_pipelines/errors.py (the lowest layer); every kind
below and the data errors (`DataError`, `data_pipelines.episodes.StoreError`,
`data_pipelines.collect.CollectError`) subclass it, so an entry point catches it alone.
"""

from data_pipelines.errors import DataError, UserError

__all__ = ["CheckpointError", "ConfigError", "DataError", "UserError"]


class ConfigError(UserError):
  """A config key or value that cannot work (names the --config.* flag)."""


class CheckpointError(UserError):
  """A checkpoint that is missing, damaged or incompatible with the config."""
