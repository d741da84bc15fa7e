"""`serve`: the decomposer behind an HTTP API, OpenAI-compatible, with dynamic batching.

    app = create_app(load_decomposer("embedded"), ServeSettings(api_key="..."))  # then uvicorn.run(app)

Modules: app.py (the FastAPI routes and error shape), service.py (settings, question checks,
waiting for answers), batcher.py (the queue and the one model thread), requests.py (request bodies
and ApiError), chat.py (OpenAI's response and stream formats).
"""

from __future__ import annotations

from qdtool.core.serving.app import BATCH_HEADER, create_app
from qdtool.core.serving.service import ServeSettings, default_model_name

__all__ = ["BATCH_HEADER", "ServeSettings", "create_app", "default_model_name"]
