"""Shared pytest setup: import edgemesh from this checkout, whatever the working directory."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# An editable install points here anyway; this also covers a plain `pytest` with the repo
# not installed.  (The `twisted/` folder here has no __init__.py, so it never shadows Twisted.)
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
