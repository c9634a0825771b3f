"""``python -m pipelines.serving`` (``make serve``): the prediction service on one uvicorn worker.

Where it listens comes from :mod:`pipelines.settings` like every local server's address:
``MLOPS_BIND_HOST`` (default ``127.0.0.1``) and ``MLOPS_SERVE_PORT`` (default ``8000``).
"""

from __future__ import annotations

import logging
import sys


def main() -> int:
    """Resolve the environment, read the params, serve until stopped (SIGINT or SIGTERM)."""
    import uvicorn

    from pipelines.config import load_params
    from pipelines.serving.app import create_app
    from pipelines.settings import resolve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The registry watcher and the served log run in threads beside the event loop: a request
    # waits at most this long for the GIL when one of them is busy (Python's default is 5 ms).
    sys.setswitchinterval(0.001)
    settings = resolve()
    params = load_params(settings.params_path)
    # One worker: each worker would load its own copy of every served version.
    uvicorn.run(
        create_app(params, settings),
        host=settings.bind_host,
        port=settings.serve_port,
        workers=1,
        access_log=False,
        log_config=None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
