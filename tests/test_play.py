"""Play in the browser (dreamer4/play): run lookup, key bindings, the HTTP endpoints and their
bad-request answers, the CLI's one-line errors, and the page driven by a real headless Chromium.

Everything runs on one tiny real pipeline workdir: collect (toy world, 16x16), a tokenizer
checkpoint (initial weights: its training is the expensive part and is tested elsewhere), the
real encode job and two real dynamics training steps, run and laid out by `run_pipeline`.
"""

import base64
import dataclasses
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest
from PIL import Image

from data_pipelines.envs.base import ActionComponent, ActionSpec
from dreamer4.errors import UserError
from dreamer4.play import server
from dreamer4.play import session as play

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_KEYS = ("ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "w", "a", "s", "d", " ")


# ---------------------------------------------------------------------- the run and the server


def _snapshot(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      st = os.stat(p)
      out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def play_run(world_model_run):
  """A pipeline workdir RUN with data/ (latents included), tokenizer/ and dynamics/ (2 steps): the
  session's (tests/conftest.py), shared with the agent-phase tests; play writes nothing into it."""
  root = world_model_run
  assert play.checkpoint_steps(os.path.join(root, "dynamics", "checkpoints")) == [2]
  return root


@pytest.fixture(scope="module")
def before(play_run):
  return _snapshot(play_run)


@pytest.fixture(scope="module")
def served(play_run, before):
  """The server on a free port, in a thread, with the module's one session."""
  httpd = server.make_server("127.0.0.1", 0)
  httpd.session = play.PlaySession(play.locate_run(play_run), k=4)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def _call(base, path, body=None, method=None, raw=None):
  """(status, parsed JSON or bytes, headers) of one request; errors are answers, not exceptions."""
  data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
  req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)
  if data is not None:
    req.add_header("Content-Type", "application/json")
  try:
    with urllib.request.urlopen(req, timeout=60) as r:
      status, payload, headers = r.status, r.read(), r.headers
  except urllib.error.HTTPError as e:
    status, payload, headers = e.code, e.read(), e.headers
  if headers.get("Content-Type", "").startswith("application/json"):
    payload = json.loads(payload)
  return status, payload, headers


def _png(data_url):
  assert data_url.startswith("data:image/png;base64,")
  return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1])))


def _assert_error(status, payload, want_status, *fragments):
  assert status == want_status, (status, payload)
  assert set(payload) == {"error"} and "\n" not in payload["error"], payload
  for f in fragments:
    assert f in payload["error"], payload


# ---------------------------------------------------------------------- pure parts


def test_key_bindings_follow_the_action_spec():
  labels = ("noop", "up", "down", "left", "right")
  toy = play.key_bindings(ActionSpec((ActionComponent("move", "discrete", 5, labels),)))
  assert [(b.name, b.keys, b.column, b.value) for b in toy] == [
    ("noop", (" ",), 0, 0),
    ("up", ("ArrowUp", "w"), 0, 1),
    ("down", ("ArrowDown", "s"), 0, 2),
    ("left", ("ArrowLeft", "a"), 0, 3),
    ("right", ("ArrowRight", "d"), 0, 4),
  ]

  from data_pipelines.envs.craftax import ACTION_NAMES

  crafter = play.key_bindings(ActionSpec((ActionComponent("action", "discrete", len(ACTION_NAMES), ACTION_NAMES),)))
  keys = [k for b in crafter for k in b.keys]
  assert len(crafter) == 17 and len(keys) == len(set(keys))
  assert {b.name: b.keys for b in crafter}["do"] == ("1",)  # unnamed actions take digits first
  assert [b.value for b in crafter] == list(range(17))

  generic = play.key_bindings(
    ActionSpec(
      (
        ActionComponent("a", "discrete", 3),
        ActionComponent("k", "binary", 2, ("x", "y")),
        ActionComponent("stick", "continuous", 2),
      )
    )
  )
  assert [(b.name, b.keys, b.column, b.value) for b in generic] == [
    ("a=0", ("1",), 0, 0),
    ("a=1", ("2",), 0, 1),
    ("a=2", ("3",), 0, 2),
    ("k:x", ("4",), 1, 1),
    ("k:y", ("5",), 2, 1),
  ]


def test_locate_run_reads_pipeline_and_dynamics_workdirs(play_run, tmp_path, monkeypatch):
  a, b = play.locate_run(play_run), play.locate_run(os.path.join(play_run, "dynamics"))
  assert a.dynamics == os.path.join(play_run, "dynamics") and os.path.samefile(a.dynamics, b.dynamics)
  assert a.tokenizer == b.tokenizer == os.path.join(play_run, "tokenizer")
  assert a.data == b.data == os.path.join(play_run, "data")
  assert os.path.samefile(os.path.dirname(a.agent), play_run) and os.path.basename(a.agent) == "agent"
  # Paths recorded relative to another directory: the folders beside dynamics/ are found.
  moved = tmp_path / "moved"
  (moved / "dynamics" / "checkpoints" / "2").mkdir(parents=True)
  (moved / "data").mkdir()
  (moved / "tokenizer").mkdir()
  cfg = dict(
    a.config, data=dict(a.config["data"], path="runs/elsewhere/data"), tokenizer_workdir="runs/elsewhere/tokenizer"
  )
  (moved / "dynamics" / "config.json").write_text(json.dumps(cfg))
  monkeypatch.chdir(tmp_path)
  c = play.locate_run("moved")
  assert (c.data, c.tokenizer) == (str(moved / "data"), str(moved / "tokenizer"))
  shutil.rmtree(moved / "data")
  with pytest.raises(UserError, match=r"^--data: the dataset 'runs/elsewhere/data' named by .* does not exist"):
    play.locate_run("moved")


def test_policy_hook(play_run, tmp_path, monkeypatch):
  spec = ActionSpec((ActionComponent("move", "discrete", 5),))
  paths = play.locate_run(play_run)
  fn, why = play.find_policy(paths, spec, 4, 8)
  assert fn is None and "no agent checkpoint" in why and paths.agent in why
  paths = dataclasses.replace(paths, agent=str(tmp_path))
  monkeypatch.setitem(sys.modules, play.POLICY_HOOK, types.ModuleType(play.POLICY_HOOK))
  fn, why = play.find_policy(paths, spec, 4, 8)
  assert fn is None and "no load_policy" in why
  seen = {}

  def load_policy(agent_workdir, *, action_spec, num_latents, latent_dim):
    seen.update(workdir=agent_workdir, spec=action_spec, shape=(num_latents, latent_dim))
    return lambda z_TNL, rng: np.array([4], np.int32)

  sys.modules[play.POLICY_HOOK].load_policy = load_policy
  fn, why = play.find_policy(paths, spec, 4, 8)
  assert why == "" and fn(None, None)[0] == 4 and seen == {"workdir": str(tmp_path), "spec": spec, "shape": (4, 8)}


# ---------------------------------------------------------------------- the server (no browser)


def test_reset_then_every_key_gives_a_new_frame(served):
  base = served.url
  s, info, _ = _call(base, "/api/info")
  assert s == 200 and info["frame_shape"] == [16, 16, 3] and info["context_frames"] == 3 and not info["started"]
  assert {k for b in info["bindings"] for k in b["keys"]} == set(TOY_KEYS)
  assert not info["policy"]["available"] and "agent" in info["policy"]["reason"]
  # Before any reset: stepping and downloading answer 409 and say what to do.
  _assert_error(*_call(base, "/api/step", {"key": "w"})[:2], 409, "Reset")
  _assert_error(*_call(base, "/api/session.gif")[:2], 409, "Reset")

  s, r, _ = _call(base, "/api/reset", {"episode": info["default_episode"], "start": 1})
  assert s == 200 and r["step"] == 0 and _png(r["frame"]).size == (16, 16)
  pngs = []
  for i, key in enumerate(TOY_KEYS + ("W", "D")):  # letters in either case
    s, r, _ = _call(base, "/api/step", {"key": key})
    assert s == 200, r
    img = _png(r["frame"])
    assert img.size == (16, 16) and img.mode == "RGB"
    assert r["step"] == i + 1 and r["recorded"] == 3 + i + 1 and r["gen_ms"] > 0
    pngs.append(r["frame"])
  assert len(set(pngs)) > 1
  s, r, _ = _call(base, "/api/step", {"action": "left"})
  assert s == 200 and r["action"] == "left"
  for _ in range(12):  # the step never recompiles
    s, r, _ = _call(base, "/api/step", {"key": "ArrowRight"})
  assert s == 200 and r["compiles"] == 1 and served.session.world.step_compiles() == 1

  # The recording: the 3 context frames then every generated frame, scaled to 256 px.
  s, gif, headers = _call(base, "/api/session.gif")
  assert s == 200 and headers["Content-Type"] == "image/gif" and "attachment" in headers["Content-Disposition"]
  im = Image.open(io.BytesIO(gif))
  assert im.format == "GIF" and im.size == (256, 256) and im.n_frames == 3 + r["step"]

  # A reset starts a new session (and the step still does not recompile).
  s, r, _ = _call(base, "/api/reset", {"episode": info["default_episode"], "start": 0, "seed": 3})
  assert s == 200 and r["recorded"] == 3
  s, r, _ = _call(base, "/api/step", {"key": " "})
  assert s == 200 and r["step"] == 1 and r["action"] == "noop" and r["compiles"] == 1


def test_bad_requests_get_4xx_and_the_server_keeps_serving(served):
  base = served.url
  host, port = served.server_address[:2]
  eps = {e["id"]: e["length"] for e in _call(base, "/api/info")[1]["episodes"]}
  _call(base, "/api/reset", {})
  cases = [
    (_call(base, "/api/step", {"key": "F7"}), 400, "unknown key 'F7'", "ArrowUp"),
    (_call(base, "/api/step", {"action": "jump"}), 400, "unknown action 'jump'"),
    (_call(base, "/api/step", {"key": 3}), 400, "unknown key 3"),
    (_call(base, "/api/step", {}), 400, '{"key": KEY}'),
    (_call(base, "/api/step", raw=b'{"key": "w"'), 400, "malformed JSON"),
    (_call(base, "/api/step", raw=b"[1, 2]"), 400, "must be an object"),
    (_call(base, "/api/step", raw=b"\xff\xfe"), 400, "malformed JSON"),
    (_call(base, "/api/reset", {"episode": 10_000}), 400, "episode 10000 is out of range"),
    (_call(base, "/api/reset", {"episode": 0, "start": eps[0]}), 400, "start"),
    (_call(base, "/api/reset", {"episode": "1"}), 400, "episode must be an integer"),
    (_call(base, "/api/nope"), 404, "no endpoint /api/nope"),
    (_call(base, "/api/step"), 405, "GET is not allowed on /api/step; use POST"),
    (_call(base, "/api/info", {"x": 1}), 405, "POST is not allowed"),
    (_call(base, "/api/reset", {}, method="DELETE"), 405, "DELETE"),
    (_call(base, "/api/step", {"policy": True}), 409, "no policy can act"),
  ]
  for (status, payload, _headers), want, *fragments in cases:
    _assert_error(status, payload, want, *fragments)
  assert _call(base, "/api/step")[2]["Allow"] == "POST"

  # An oversized body is refused unread (413) and that connection is closed.
  conn = http.client.HTTPConnection(host, port, timeout=30)
  conn.putrequest("POST", "/api/step")
  conn.putheader("Content-Type", "application/json")
  conn.putheader("Content-Length", str(10 * 1024 * 1024))
  conn.endheaders()
  resp = conn.getresponse()
  payload = json.loads(resp.read())
  conn.close()
  _assert_error(resp.status, payload, 413, "exceeds the limit")
  # Keep-alive survives a 4xx that was read completely: same connection, next request fine.
  conn = http.client.HTTPConnection(host, port, timeout=60)
  for body, want in ((b"{oops", 400), (b'{"key": "a"}', 200), (b'{"key": "?"}', 400), (b'{"key": "s"}', 200)):
    conn.request("POST", "/api/step", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == want, resp.read()
    resp.read()
  conn.close()
  s, r, _ = _call(base, "/api/step", {"key": "d"})
  assert s == 200 and r["compiles"] == 1


def test_policy_acts_when_one_is_set(served):
  base = served.url
  seen = []

  def policy(z_TNL, rng):
    seen.append(z_TNL.shape)
    return np.array([2], np.int32)  # "down"

  session = served.session
  reason = session.policy_reason
  session.set_policy(policy)
  try:
    assert _call(base, "/api/info")[1]["policy"] == {"available": True, "reason": ""}
    _call(base, "/api/reset", {})
    for _ in range(3):
      s, r, _ = _call(base, "/api/step", {"policy": True})
      assert s == 200 and r["action"] == "policy:down", r
    # The policy reads the context (3) and generated frames, at most the model's window (4).
    assert seen == [(3, 4, 8), (4, 4, 8), (4, 4, 8)]
  finally:
    session.set_policy(None, reason)
  _assert_error(*_call(base, "/api/step", {"policy": True})[:2], 409, "agent")


def test_page_is_served(served):
  s, html, headers = _call(served.url, "/")
  assert s == 200 and headers["Content-Type"].startswith("text/html")
  for needle in (
    b'id="frame"',
    b'id="frame-count"',
    b'id="fps"',
    b'id="reset"',
    b'id="policy"',
    b'href="/api/session.gif"',
    b"/api/step",
  ):
    assert needle in html


# ---------------------------------------------------------------------- the CLI


def _cli_env():
  """The test session's JAX setup (8 CPU devices, its compilation cache: the World's compiles are hits)."""
  return dict(
    os.environ,
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    JAX_PLATFORMS="cpu",
    JAX_NUM_CPU_DEVICES="8",
    JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
  )


def _cli(*args, timeout=120):
  env = _cli_env()
  return subprocess.run(
    [sys.executable, "-m", "dreamer4.play", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
  )


def test_cli_bad_input_is_one_line_and_exit_2(play_run, tmp_path):
  only_config = tmp_path / "untrained"
  (only_config / "dynamics").mkdir(parents=True)
  shutil.copy(os.path.join(play_run, "dynamics", "config.json"), only_config / "dynamics" / "config.json")
  busy = socket.socket()
  busy.bind(("127.0.0.1", 0))
  busy.listen(1)
  port = busy.getsockname()[1]
  before = _snapshot(play_run)
  try:
    cases = [
      ((), "error: --workdir is required"),
      ((f"--workdir={tmp_path / 'missing'}",), "error: --workdir=" + str(tmp_path / "missing") + " does not exist"),
      ((f"--workdir={tmp_path}",), "holds no dynamics run"),
      ((f"--workdir={only_config}",), "holds no dynamics checkpoint"),
      ((f"--workdir={play_run}", f"--port={port}"), f"error: --port={port}: 127.0.0.1:{port} is already in use"),
      ((f"--workdir={play_run}", "--prot=1"), "error: Unknown command line flag 'prot'"),
      ((f"--workdir={play_run}", "--port=x"), "error: flag --port=x"),
    ]
    for args, want in cases:
      r = _cli(*args)
      lines = r.stderr.strip().splitlines()
      assert r.returncode == 2 and lines and lines[-1].startswith("error: ") and want in lines[-1], (args, r.stderr)
  finally:
    busy.close()
  assert _snapshot(play_run) == before
  assert sorted(os.listdir(only_config)) == ["dynamics"] and os.listdir(only_config / "dynamics") == ["config.json"]


def test_cli_serves_the_page(play_run):
  env = _cli_env()
  proc = subprocess.Popen(
    [sys.executable, "-m", "dreamer4.play", f"--workdir={play_run}", "--port=0"],
    stderr=subprocess.PIPE,
    stdout=subprocess.DEVNULL,
    text=True,
    env=env,
    cwd=ROOT,
  )
  try:
    url, lines, deadline = None, [], time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      line = proc.stderr.readline()
      lines.append(line)
      if line.startswith("play: serving "):
        url = line.split()[2]
        break
    assert url, "".join(lines[-20:])
    s, info, _ = _call(url, "/api/info")
    assert s == 200 and info["run"]["dynamics_step"] == 2
    s, r, _ = _call(url, "/api/reset", {})
    s, r, _ = _call(url, "/api/step", {"key": "ArrowUp"})
    assert s == 200 and r["step"] == 1 and r["compiles"] == 1
  finally:
    proc.terminate()
    proc.wait(timeout=30)
    proc.stderr.close()


# ---------------------------------------------------------------------- a real browser


class WebDriver:
  """The few W3C WebDriver commands the test needs, spoken to chromedriver over HTTP."""

  ELEMENT = "element-6066-11e4-a52e-4f735466cecf"

  def __init__(self, chromedriver, chromium, profile_dir):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    self.base = f"http://127.0.0.1:{port}"
    self.proc = subprocess.Popen([chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    self.sid = None
    try:
      self._start(chromium, profile_dir)
    except BaseException:
      self.close()
      raise

  def _start(self, chromium, profile_dir):
    deadline = time.time() + 30
    while True:
      try:
        if self._req("GET", "/status")["value"]["ready"]:
          break
      except OSError:
        pass
      if time.time() > deadline:
        raise AssertionError("chromedriver did not become ready in 30 s")
      time.sleep(0.2)
    args = [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
      f"--user-data-dir={profile_dir}",
      "--window-size=1000,800",
    ]
    caps = {
      "capabilities": {
        "alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": args}}
      }
    }
    self.sid = self._req("POST", "/session", caps)["value"]["sessionId"]

  def _req(self, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
      self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
      with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())
    except urllib.error.HTTPError as e:
      raise AssertionError(f"webdriver {method} {path}: {e.code} {e.read()[:500]!r}") from None

  def cmd(self, method, path, body=None):
    return self._req(method, f"/session/{self.sid}{path}", body)["value"]

  def get(self, url):
    self.cmd("POST", "/url", {"url": url})

  def js(self, script, *args):
    return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

  def find(self, css):
    return self.cmd("POST", "/element", {"using": "css selector", "value": css})[self.ELEMENT]

  def click(self, css):
    self.cmd("POST", f"/element/{self.find(css)}/click", {})

  def press(self, key):
    self.cmd(
      "POST",
      "/actions",
      {
        "actions": [
          {
            "type": "key",
            "id": "keyboard",
            "actions": [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}],
          }
        ]
      },
    )

  def wait_for(self, script, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
      value = self.js(script)
      if value:
        return value
      time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}; status: {self.js(STATUS)}")

  def close(self):
    try:
      if self.sid:
        self._req("DELETE", f"/session/{self.sid}")
    finally:
      self.proc.terminate()
      self.proc.wait(timeout=30)


STATUS = "return document.getElementById('status').textContent"
COUNT = "return document.getElementById('frame-count').textContent"
WD_KEYS = {
  "ArrowUp": "\ue013",
  "ArrowDown": "\ue015",
  "ArrowLeft": "\ue012",
  "ArrowRight": "\ue014",
  " ": " ",
  "w": "w",
  "a": "a",
  "s": "s",
  "d": "d",
}


def test_browser_plays_with_the_keyboard(served, tmp_path):
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  chromedriver = shutil.which("chromedriver")
  if not (chromium and chromedriver):
    pytest.fail(
      "the browser test needs Debian's chromium and chromedriver: apt-get install -y chromium "
      "chromium-driver (bash launch/test.sh installs them when missing)"
    )
  driver = WebDriver(chromedriver, chromium, str(tmp_path / "profile"))
  try:
    driver.get(served.url)
    # The page loads /api/info, lists the keys and resets on its own.
    driver.wait_for(
      "const i = document.getElementById('frame'); "
      "return i.src.startsWith('data:image/png') && i.naturalWidth === 16 && "
      "document.getElementById('frame-count').textContent === '0'"
    )
    assert driver.js("return document.querySelectorAll('#keys tbody tr').length") == 5
    assert driver.js("return document.getElementById('policy').disabled") is True
    assert "agent" in driver.js("return document.getElementById('policy-reason').textContent")
    srcs = set()
    for i, key in enumerate(TOY_KEYS, start=1):
      driver.press(WD_KEYS[key])
      driver.wait_for(f"return document.getElementById('frame-count').textContent === '{i}'")
      srcs.add(driver.js("return document.getElementById('frame').src"))
    assert len(srcs) > 1
    assert driver.js(STATUS) == ""
    fps = float(driver.js("return document.getElementById('fps').textContent"))
    assert fps > 0
    assert driver.js("return document.getElementById('last-action').textContent") == "noop"
    # Unmapped keys do nothing; Reset (the button, and Esc) starts over from the context.
    driver.press("x")
    time.sleep(0.3)
    assert driver.js(COUNT) == str(len(TOY_KEYS))
    driver.click("#reset")
    driver.wait_for("return document.getElementById('frame-count').textContent === '0'")
    driver.press("\ue013")
    driver.wait_for("return document.getElementById('frame-count').textContent === '1'")
    driver.press("\ue00c")  # Escape
    driver.wait_for("return document.getElementById('frame-count').textContent === '0'")
    assert served.session.world.step_compiles() == 1
  finally:
    driver.close()


def test_play_writes_nothing_into_the_run(play_run, before, served):
  assert _snapshot(play_run) == before
