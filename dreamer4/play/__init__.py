"""Browser play inside a trained world model: `python -m dreamer4.play --workdir=RUN`.

`session.py` holds the run lookup, the key bindings, the agent-policy hook and the KV-cached
session; `server.py` the HTTP endpoints over it; `page.html` is the one page; `__main__.py` the CLI.
Nothing is imported or loaded here.
"""
