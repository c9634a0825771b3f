"""``python -m pipelines.serving`` (``make serve``): the prediction service on one uvicorn worker.

Environment (besides :mod:`pipelines.settings`: the registry, the data folder, the params file):
    MLOPS_SERVE_HOST  the address to listen on; default ``127.0.0.1``
    MLOPS_SERVE_PORT  the port; default ``8000``
"""

from __future__ import annotations

import logging
import os


def main() -> int:
    """Resolve the environment, read the params, serve until stopped (SIGINT or SIGTERM)."""
    import uvicorn

    from pipelines.config import load_params
    from pipelines.serving.app import create_app
    from pipelines.settings import resolve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = resolve()
    params = load_params(settings.params_path)
    host = os.environ.get("MLOPS_SERVE_HOST", "127.0.0.1")
    port = int(os.environ.get("MLOPS_SERVE_PORT", "8000"))
    # One worker: each worker would load its own copy of every served version.
    uvicorn.run(create_app(params, settings), host=host, port=port, workers=1, access_log=False, log_config=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
