"""The review UI as a background service of the daemon (``registry-adapter run``).

The daemon finds ``make_service`` through ``scheduler.daemon.SERVICE_MODULES``; the UI runs in
uvicorn on its own thread so the scheduler keeps the main one.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from registry_adapter.app import App
from registry_adapter.extras import MissingExtra, extra_for
from review.settings import ReviewSettings

if TYPE_CHECKING:
    import uvicorn

START_TIMEOUT = 30.0


class ReviewService:
    name = "review"

    def __init__(self, app: App, host: str | None = None, port: int | None = None):
        # Imported here: the daemon looks at this module whether or not the UI is enabled, and
        # without the web extra only an enabled UI is an error.
        try:
            import uvicorn

            from review.app import UVICORN_OPTIONS, create_app
        except ModuleNotFoundError as exc:
            extra = extra_for(exc)
            if extra is None:
                raise
            raise MissingExtra("the review web UI (review.enabled: true)", extra) from None
        settings = app.settings.section(ReviewSettings)
        self.host = host or settings.host
        self.port = port or settings.port
        config = uvicorn.Config(
            create_app(app, self.host), host=self.host, port=self.port, **UVICORN_OPTIONS
        )
        self._server: uvicorn.Server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Returns once uvicorn listens; raises if it could not (port taken, ...)."""
        self._thread = threading.Thread(target=self._server.run, name="review-ui", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the review UI could not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                raise RuntimeError("the review UI did not start in time")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(START_TIMEOUT)


def make_service(app: App) -> ReviewService | None:
    """The UI when ``review.enabled`` is true in the configuration, else None."""
    return ReviewService(app) if app.settings.section(ReviewSettings).enabled else None
