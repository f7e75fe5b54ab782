"""Play inside the world model: a small local HTTP server over one `session.PlaySession`.

  python -m dreamer4.play --workdir=runs/toy            # then open http://127.0.0.1:8000/

`make_server(host, port)` binds first (so a busy port fails fast); the `PlayServer` gets its
session later (`server.session = session.PlaySession(...)`).

HTTP API (JSON in and out; errors are 4xx with {"error": "one line"} and the server keeps
serving):

  GET  /                   the page (dreamer4/play/page.html)
  GET  /api/info           frame shape, context length, episodes (held-out first), key bindings,
                           whether a policy can act (and why not)
  POST /api/reset          {"episode": int, "start": int, "seed": int?}: primes the world with C
                           frames of that episode's latents and actions (C = model.context - 1)
  POST /api/step           {"key": "ArrowUp"} | {"action": "up"} | {"policy": true}: one frame
  GET  /api/session.gif    the session since the last reset (context frames, then generated ones)
"""

from __future__ import annotations

import http.server
import json
import logging
import traceback

from dreamer4.errors import UserError
from dreamer4.play.session import PlaySession, RequestError

MAX_BODY_BYTES = 64 * 1024  # request bodies are a few bytes of JSON; anything larger is refused (413)
PAGE = "page.html"


def page_html() -> bytes:
  from importlib import resources

  return resources.files("dreamer4.play").joinpath(PAGE).read_bytes()


class Handler(http.server.BaseHTTPRequestHandler):
  """JSON endpoints over `self.server.session` (see the module docstring)."""

  server_version = "dreamer4-play/1"
  protocol_version = "HTTP/1.1"
  timeout = 60  # seconds a client may take to send its request

  ROUTES = {
    "/": ("GET",),
    "/index.html": ("GET",),
    "/api/info": ("GET",),
    "/api/session.gif": ("GET",),
    "/api/reset": ("POST",),
    "/api/step": ("POST",),
  }
  HANDLERS = {
    "/": "_index",
    "/index.html": "_index",
    "/api/info": "_api_info",
    "/api/session.gif": "_api_gif",
    "/api/reset": "_api_reset",
    "/api/step": "_api_step",
  }

  def log_message(self, fmt, *args):  # quiet: one line per request at debug level only
    logging.debug("play %s - %s", self.address_string(), fmt % args)

  # -------------------------------------------------------------------- replies

  def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    for k, v in (extra or {}).items():
      self.send_header(k, v)
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(body)

  def _json(self, status: int, value: dict, extra: dict | None = None):
    self._send(status, json.dumps(value).encode(), "application/json", extra)

  def _error(self, status: int, message: str, extra: dict | None = None):
    self._json(status, {"error": message}, extra)

  # -------------------------------------------------------------------- dispatch

  def _route(self, method: str):
    path = self.path.split("?", 1)[0]
    try:
      if path not in self.ROUTES:
        self._drain()
        raise RequestError(404, f"no endpoint {path}; see GET /api/info (endpoints: {', '.join(self.ROUTES)})")
      allowed = self.ROUTES[path]
      if method not in allowed:
        self._drain()
        self._error(405, f"{method} is not allowed on {path}; use {', '.join(allowed)}", {"Allow": ", ".join(allowed)})
        return
      getattr(self, self.HANDLERS[path])()
    except RequestError as e:
      self._error(e.status, str(e))
    except (BrokenPipeError, ConnectionResetError):
      self.close_connection = True
    except Exception as e:  # noqa: BLE001 -- report, keep serving
      logging.error("play: %s %s failed:\n%s", method, path, traceback.format_exc())
      self.close_connection = True
      self._error(500, f"internal error: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")

  def do_GET(self):  # noqa: N802
    self._route("GET")

  def do_POST(self):  # noqa: N802
    self._route("POST")

  def do_PUT(self):  # noqa: N802
    self._route("PUT")

  def do_DELETE(self):  # noqa: N802
    self._route("DELETE")

  def do_PATCH(self):  # noqa: N802
    self._route("PATCH")

  def do_OPTIONS(self):  # noqa: N802
    self._route("OPTIONS")

  # -------------------------------------------------------------------- bodies

  def _content_length(self) -> int:
    if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
      self.close_connection = True
      raise RequestError(411, "chunked bodies are not accepted; send Content-Length")
    raw = self.headers.get("Content-Length")
    if raw is None:
      return 0
    try:
      n = int(raw)
    except ValueError:
      n = -1
    if n < 0:
      self.close_connection = True
      raise RequestError(400, f"bad Content-Length {raw!r}")
    return n

  def _drain(self):
    """Reads (and drops) a small body so the connection stays usable; closes on a large one."""
    try:
      n = self._content_length()
    except RequestError:
      return
    if n > MAX_BODY_BYTES:
      self.close_connection = True
    elif n:
      self.rfile.read(n)

  def _body(self) -> dict:
    n = self._content_length()
    if n > MAX_BODY_BYTES:
      self.close_connection = True  # the body is not read: the connection cannot be reused
      raise RequestError(413, f"request body of {n} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")
    raw = self.rfile.read(n) if n else b""
    if not raw.strip():
      return {}
    try:
      value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
      raise RequestError(400, f"malformed JSON body: {e}") from None
    if not isinstance(value, dict):
      raise RequestError(400, f"the JSON body must be an object, got {type(value).__name__}")
    return value

  def _session(self) -> PlaySession:
    session = self.server.session
    if session is None:
      raise RequestError(503, "the world model is still loading; try again in a moment")
    return session

  # -------------------------------------------------------------------- endpoints

  def _index(self):
    self._send(200, page_html(), "text/html; charset=utf-8")

  def _api_info(self):
    self._json(200, self._session().info())

  def _api_reset(self):
    body = self._body()
    session = self._session()
    self._json(
      200, session.reset(body.get("episode", session.default_episode), body.get("start", 0), body.get("seed", 0))
    )

  def _api_step(self):
    body = self._body()
    self._json(200, self._session().step(body))

  def _api_gif(self):
    data = self._session().gif()
    self._send(200, data, "image/gif", {"Content-Disposition": 'attachment; filename="dreamer4-play.gif"'})


class PlayServer(http.server.ThreadingHTTPServer):
  """ThreadingHTTPServer with a `session` (None while loading: endpoints answer 503)."""

  daemon_threads = True
  session: PlaySession | None = None

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}/"


def make_server(host: str = "127.0.0.1", port: int = 8000) -> PlayServer:
  """Binds now (a busy port fails here, before any model is loaded).

  Raises:
    UserError: the port is in use or the host cannot be bound.
  """
  try:
    return PlayServer((host, int(port)), Handler)
  except OSError as e:
    import errno

    if e.errno == errno.EADDRINUSE:
      raise UserError(
        f"--port={port}: {host}:{port} is already in use; pick a free port with --port=N (--port=0 picks any)"
      ) from None
    if e.errno == errno.EACCES:
      raise UserError(f"--port={port}: not allowed to listen on it; use a port above 1023") from None
    raise UserError(f"--host={host}: cannot listen there ({e.strerror or e}); use 127.0.0.1 or 0.0.0.0") from None
