"""User-facing errors: each carries one line that names the setting or file and the fix."""


class UserError(ValueError):
  """Bad input from the user (config, dataset, checkpoint, workdir). `main` prints it as one line."""


class ConfigError(UserError):
  """A config key or value that cannot work (names the --config.* flag)."""


class CheckpointError(UserError):
  """A checkpoint that is missing, damaged or incompatible with the config."""
