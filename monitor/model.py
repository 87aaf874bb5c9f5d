"""The loaded model and its hot reload.

The service reads :attr:`ModelManager.current` once per batch; a reload builds the new scorer
completely (in a worker thread) and then swaps the reference, so a batch is always scored by
exactly one model and no reading is dropped. A bundle that fails verification, or whose feature
list or window length differs from the running one (the windows in memory are shaped by them),
is refused: the old model keeps serving, one line is logged and the failure is counted.

With trusted keys (``model.trusted_keys``) a bundle must also be signed by one of them; the key
files are read again on every load, so a key added or retired there counts from the next reload.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor.bundle import MANIFEST_FILE, Bundle, load_bundle
from monitor.config import DEFAULT_ROUTE
from monitor.errors import BundleError, PlantwatchError
from monitor.events import ModelRef
from monitor.metrics import Metrics
from monitor.scoring import Device, Scorer, available_providers, cpu_cores, scoring_plan
from monitor.signing import SIGNATURE_FILE, load_trusted_keys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    bundle: Bundle
    scorer: Scorer

    @property
    def ref(self) -> ModelRef:
        m = self.bundle.manifest.model
        return ModelRef(name=m.name, version=m.version, sha256=self.bundle.sha256)

    @property
    def threshold(self) -> float:
        return self.bundle.manifest.threshold.value


Stamp = tuple[int, ...]


def _stamp(path: Path) -> Stamp | None:
    """What changes when a bundle is rewritten in place or swapped in by rename.

    The signature file counts too: a signature copied in after its manifest is a new bundle.
    """
    try:
        st = (path / MANIFEST_FILE).stat()
    except OSError:
        return None
    try:
        sig = (path / SIGNATURE_FILE).stat()
        signature: Stamp = (sig.st_ino, sig.st_mtime_ns, sig.st_size)
    except OSError:
        signature = ()
    return (st.st_ino, st.st_mtime_ns, st.st_size, *signature)


class ModelManager:
    """Owns the current :class:`LoadedModel` and swaps in new bundles from ``path``."""

    def __init__(
        self,
        path: Path,
        *,
        device: Device,
        threads: int,
        workers: int = 1,
        io_binding: bool | None = None,
        metrics: Metrics | None = None,
        trusted_keys: Sequence[Path] = (),
        route: str = DEFAULT_ROUTE,
    ) -> None:
        self.path = path
        #: The route whose bundle this is (see ``Settings.routes``): its metrics' label.
        self.route = route
        self.trusted_keys = tuple(trusted_keys)
        self.device: Device = device
        #: ``model.workers`` and ``model.threads`` as configured (0: auto): see :attr:`plan`.
        self._configured = (workers, threads)
        self.io_binding = io_binding
        self.metrics = metrics
        self._current: LoadedModel | None = None
        self._stamp: Stamp | None = None
        self._reload_requested = asyncio.Event()

    @functools.cached_property
    def plan(self) -> tuple[int, int]:
        """Batches scored at once and ONNX Runtime threads for each: see :func:`scoring_plan`
        (resolved once, from the providers installed and the cores)."""
        workers, threads = scoring_plan(
            self.device, *self._configured, available_providers(), cpu_cores()
        )
        logger.info(
            "scoring %d batch(es) at once, %s ONNX Runtime thread(s) each",
            workers,
            threads or "all",
        )
        return workers, threads

    @property
    def workers(self) -> int:
        return self.plan[0]

    @property
    def current(self) -> LoadedModel:
        if self._current is None:
            raise RuntimeError("model not loaded; call load() first")
        return self._current

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def _build(self) -> LoadedModel:
        keys = load_trusted_keys(self.trusted_keys)
        bundle = load_bundle(self.path, trusted_keys=keys)
        # The service overlaps scoring with the event loop's work on the next batch: pool
        # threads spinning between runs would take the loop's core. Measured on 2 cores
        # (bench/results/performance.md, session 6): with spinning the overlap bought nothing;
        # without it 10-15 % more readings/s, although the graph alone runs ~15 % slower.
        scorer = Scorer(
            bundle,
            device=self.device,
            threads=self.plan[1],
            io_binding=self.io_binding,
            spinning=False,
        )
        return LoadedModel(bundle, scorer)

    async def load(self) -> LoadedModel:
        """First load; errors propagate (a service without a model must not start)."""
        stamp = _stamp(self.path)
        model = await asyncio.to_thread(self._build)
        self._install(model, stamp)
        return model

    def _install(self, model: LoadedModel, stamp: Stamp | None) -> None:
        self._current, self._stamp = model, stamp
        m = model.bundle.manifest
        signed = model.bundle.signed_by
        logger.info(
            "%smodel %s %s (sha256 %s…%s) loaded; threshold %.6g; provider %s",
            "" if self.route == DEFAULT_ROUTE else f"route {self.route}: ",
            m.model.name,
            m.model.version,
            model.bundle.sha256[:12],
            f", signed by key {signed}" if signed else "",
            m.threshold.value,
            model.scorer.provider,
        )
        if self.metrics is not None:
            self.metrics.set_model(
                m.model.name,
                m.model.version,
                model.bundle.sha256,
                model.scorer.provider,
                threshold=m.threshold.value,
                route=self.route,
            )

    def request_reload(self) -> None:
        """Ask the watcher to reload now (SIGHUP)."""
        self._reload_requested.set()

    async def reload(self) -> bool:
        """Try the bundle at ``path``; swap it in if valid and compatible. Never raises."""
        stamp = _stamp(self.path)
        old = self.current
        try:
            new = await asyncio.to_thread(self._build)
            _check_compatible(old, new)
        except PlantwatchError as exc:
            self._stamp = stamp  # do not retry the same broken bundle every poll
            logger.error("model reload refused, keeping %s: %s", old.ref.version, exc)
            if self.metrics is not None:
                self.metrics.model_reloads.labels("invalid").inc()
            return False
        if new.bundle.sha256 == old.bundle.sha256 and new.threshold == old.threshold:
            self._stamp = stamp
            return False
        self._install(new, stamp)
        if self.metrics is not None:
            self.metrics.model_reloads.labels("ok").inc()
        return True

    async def watch(self, poll_s: float, *, poll: bool = True) -> None:
        """Reload when the bundle changes (``poll``) or on :meth:`request_reload`. Runs forever."""
        while True:
            try:
                async with asyncio.timeout(poll_s):
                    await self._reload_requested.wait()
            except TimeoutError:
                if not poll:
                    continue
            requested = self._reload_requested.is_set()
            self._reload_requested.clear()
            stamp = _stamp(self.path)
            # A missing manifest is a bundle being swapped in: wait for it to settle.
            if stamp is not None and (requested or stamp != self._stamp):
                await self.reload()


def _check_compatible(old: LoadedModel, new: LoadedModel) -> None:
    a, b = old.bundle.manifest, new.bundle.manifest
    if a.features != b.features:
        raise BundleError(f"{new.bundle.path}: feature list differs from the running model's")
    if a.window.length != b.window.length:
        raise BundleError(
            f"{new.bundle.path}: window length {b.window.length} differs from the running "
            f"model's {a.window.length}"
        )
    if a.sampling_interval_s != b.sampling_interval_s:
        raise BundleError(f"{new.bundle.path}: sampling interval differs from the running model's")
