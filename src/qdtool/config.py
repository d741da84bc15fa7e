"""Settings shared by every command.

Run configurations (training, presets) live here too as they arrive: typed, with a default and a
one-line help per field, and unknown keys rejected.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "QDTOOL_CACHE"


def cache_dir() -> Path:
    """Where qdtool keeps converted models: `$QDTOOL_CACHE`, else the platform's user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("qdtool", appauthor=False))
