"""How every backend starts Jupyter so that the notebook demands its token.

The token itself reaches Jupyter through JUPYTER_TOKEN_FILE (a 0600 file). A user's own
Jupyter config can still switch the token off (`c.IdentityProvider.token = ''`), and it
overrides that variable; so each job also gets a private config directory, put first in
JUPYTER_CONFIG_PATH. Jupyter gives that path precedence over ~/.jupyter, so this config is
loaded after the user's, under each name the Jupyter apps read, and sets the token again.
Nothing of it is on a command line.
"""

from __future__ import annotations

CONFIG = """\
# Written by nbtether for this job: the notebook always demands the session's token.
import os
with open(os.environ["JUPYTER_TOKEN_FILE"]) as token_file:
    c.IdentityProvider.token = token_file.read()
# One cookie secret per session, next to the token, so a page logged in to one job of the
# session stays logged in to the next (the runtime directory is private to each job).
c.ServerApp.cookie_secret_file = os.path.join(
    os.path.dirname(os.environ["JUPYTER_TOKEN_FILE"]), "cookie_secret")
# One sessions database per session too: an open page's session is still listed by the
# next job once its kernel id is started there at the walltime switch (jupyter_api.py).
c.SessionManager.database_filepath = os.path.join(
    os.path.dirname(os.environ["JUPYTER_TOKEN_FILE"]), "sessions.db")
"""
CONFIG_NAMES = ("jupyter_server_config", "jupyter_lab_config", "jupyter_notebook_config")
# What the config above keeps next to the token for the whole session: removed with it.
SESSION_FILES = ("token", "cookie_secret", "sessions.db")
