"""Browser play inside a trained world model: `python -m dreamer4.play --workdir=RUN`.

`server.py` holds the pieces (run lookup, key bindings, the KV-cached session, the HTTP
endpoints and the agent-policy hook); `page.html` is the one page; `__main__.py` the CLI.
Nothing is imported or loaded here.
"""
