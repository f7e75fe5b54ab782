"""The root of every user-facing error.

A `UserError` is bad input from the user (a config setting, a dataset, a checkpoint, a
workdir, a command-line flag) whose message is one line naming the setting or path and
the fix. The entry points (`dreamer4.main`, `dreamer4.play`, `data_pipelines.collect`)
catch it and print `error: <message>`; anything else is a bug and keeps its traceback.

It lives in the lowest layer (data_pipelines imports nothing from dreamer4);
dreamer4/errors.py re-exports it with the kinds of the training code.
"""


class UserError(ValueError):
  """Bad input from the user; str(e) is the one line an entry point prints.

  A ValueError, so code that validates arguments with `except ValueError` still sees it.
  """


class DataError(UserError):
  """A dataset that cannot give what was asked of it (windows, batches, arrays); the
  message names the dataset and the setting to change (e.g. --config.data.window)."""
