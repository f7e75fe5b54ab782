r"""Play inside a trained world model in the browser.

  python -m dreamer4.play --workdir=runs/toy [--port=8000] [--host=127.0.0.1]

--workdir is a pipeline workdir (holding dynamics/ and tokenizer/) or a dynamics workdir; the
tokenizer and the dataset are found from the dynamics run's config.json (override with --tokenizer
and --data). Open the printed address, pick a start context, and step the world with the keys
shown on the page. Bad input stops with one line on stderr ("error: ..."), exit code 2, before
the model is loaded; play never writes into the run.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline workdir (with dynamics/) or dynamics workdir.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to serve on (0: any free port).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
_DATA = flags.DEFINE_string("data", None, "EpisodeStore with latents (default: the one the dynamics run names).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer workdir (default: the one the dynamics run names).")
_K = flags.DEFINE_integer("k", 4, "Shortcut steps per generated frame (a power of two <= the model's k_max).")
_CONTEXT_NOISE = flags.DEFINE_float("context_noise", 0.1, "Noise share of history frames [P §3.2].")
_SEED = flags.DEFINE_integer("seed", 0, "Base seed of the generation noise.")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that reports a bad flag as one line, exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    print(f"error: {lines[0] if lines else e}", file=sys.stderr)
    sys.exit(2)


class _QuietOrbax(logging.Filter):
  """Restoring only the params of a train-state checkpoint makes Orbax warn about every other item."""

  def filter(self, record):
    return record.levelno >= logging.ERROR or "orbax" not in record.pathname


def main(argv):
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)
  absl_logging.get_absl_handler().addFilter(_QuietOrbax())
  from dreamer4.errors import UserError
  from dreamer4.play import server, session

  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; give settings as flags, e.g. --workdir=runs/toy", file=sys.stderr)
    sys.exit(2)
  httpd = None
  try:
    paths = session.locate_run(_WORKDIR.value, _DATA.value, _TOKENIZER.value)  # files only: fast
    if _K.value < 1 or _K.value & (_K.value - 1):
      raise UserError(f"--k={_K.value} must be a power of two (1, 2, 4, ...)")
    httpd = server.make_server(_HOST.value, _PORT.value)  # a busy port fails here
    print(
      f"play: loading {paths.dynamics} (tokenizer {paths.tokenizer}, data {paths.data}) ...",
      file=sys.stderr,
      flush=True,
    )
    httpd.session = session.PlaySession(paths, k=_K.value, context_noise=_CONTEXT_NOISE.value, seed=_SEED.value)
  except UserError as e:  # StoreError and DataError are UserErrors
    if httpd is not None:
      httpd.server_close()
    print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
    sys.exit(2)
  print(f"play: serving {httpd.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
  try:
    httpd.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    httpd.server_close()


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.getLogger("absl").setLevel(logging.WARNING)
  app.run(main, flags_parser=parse_flags)
