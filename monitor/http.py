"""The operations endpoint: ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

#: Named readiness checks; all must be true for ``/readyz`` to answer 200.
ReadinessProbe = Callable[[], Mapping[str, bool]]
LivenessProbe = Callable[[], bool]


class OpsServer(Lifecycle):
    """A small aiohttp server. Answering at all shows the event loop is alive; ``liveness``
    adds whatever else must hold (the consume loop has not died)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        readiness: ReadinessProbe,
        liveness: LivenessProbe = lambda: True,
    ) -> None:
        self.registry = registry
        self.host, self.port = host, port
        self._readiness = readiness
        self._liveness = liveness
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        # With port 0 the OS picked one; report the real address.
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        logger.info("metrics and health on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ok = self._liveness()
        return web.Response(status=200 if ok else 503, text="ok\n" if ok else "consume loop down\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = dict(self._readiness())
        ready = all(checks.values())
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps({"ready": ready, "checks": checks}) + "\n",
            content_type="application/json",
        )
