"""The ``plantwatch`` command line: the only place that parses arguments or configures logging.

Offline subcommands (``simulate``, ``train``) live in the :mod:`training` package and are
imported only when invoked, so the runtime never loads torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor import __version__
from monitor.errors import ConfigError, DependencyError, PlantwatchError

if TYPE_CHECKING:
    import asyncio

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from monitor.config import Settings

logger = logging.getLogger("plantwatch")

Handler = Callable[[argparse.Namespace], int]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """Parse ``90``, ``90s``, ``15m``, ``6h`` or ``2d`` into seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 90s, 15m, 6h, 2d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def csv_list(text: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for plant log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# --- subcommands -----------------------------------------------------------------------------


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a plant of pumps and compressors, to a file or to Kafka",
        description=(
            "Simulate a deterministic (by --seed) plant of centrifugal pumps and compressors "
            "with operating-mode changes, daily cycles, sensor noise and labelled injected "
            "faults. Writes CSV or Parquet (by the --out suffix) or produces JSON readings to a "
            "Kafka topic, keyed by asset id."
        ),
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="file to write (.csv or .parquet)")
    target.add_argument("--kafka-topic", help="Kafka topic to produce readings to")
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    p.add_argument("--rate", type=float, default=0.0, help="readings/s to Kafka (0: max)")
    p.add_argument("--batch-size", type=int, default=1, help="readings per Kafka message")
    p.add_argument("--pumps", type=int, default=4)
    p.add_argument("--compressors", type=int, default=2)
    p.add_argument("--duration", type=duration, default=86_400.0, help="e.g. 6h, 2d")
    p.add_argument("--interval", type=duration, default=1.0, help="sampling interval")
    p.add_argument("--start", default="2026-01-01T00:00:00Z", help="first timestamp (ISO-8601)")
    p.add_argument("--seed", type=int, default=0, help="randomness of this period")
    p.add_argument(
        "--plant-seed",
        type=int,
        help="the machines' physical parameters (default: --seed); keep it to simulate the "
        "same plant on another day",
    )
    p.add_argument(
        "--faults", type=int, default=None, help="exact number of fault episodes (0: normal only)"
    )
    p.add_argument(
        "--fault-rate", type=float, default=1.0, help="fault episodes per asset-day (default 1)"
    )
    p.add_argument("--fault-kinds", type=csv_list, help="subset of fault kinds")
    p.add_argument(
        "--faults-out",
        type=Path,
        help="write the fault episodes (ground truth) as JSON (default: beside --out)",
    )
    p.set_defaults(handler=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from training.simulator import (
        FAULT_KINDS,
        PlantConfig,
        PlantSimulator,
        produce,
        write,
        write_faults,
    )

    config = PlantConfig(
        n_pumps=args.pumps,
        n_compressors=args.compressors,
        interval_s=args.interval,
        start=args.start,
        duration_s=args.duration,
        seed=args.seed,
        plant_seed=args.plant_seed,
        fault_kinds=args.fault_kinds or FAULT_KINDS,
        faults_per_asset_day=args.fault_rate,
        n_faults=args.faults,
    )
    sim = PlantSimulator(config)
    faults_out = args.faults_out
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = write(sim, args.out)
        print(f"wrote {summary.rows} rows for {len(summary.assets)} assets to {summary.path}")
        faults_out = faults_out or args.out.with_name(args.out.stem + ".faults.json")
    else:
        servers = args.bootstrap_servers or os.environ.get(
            "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"
        )
        count = asyncio.run(
            produce(sim, servers, args.kafka_topic, rate=args.rate, batch_size=args.batch_size)
        )
        print(f"produced {count} readings for {len(sim.assets)} assets to {args.kafka_topic}")
    if faults_out is not None:
        write_faults(sim.faults, faults_out)
        print(f"{len(sim.faults)} fault episodes (ground truth) in {faults_out}")
    return 0


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="train an autoencoder on normal data and export a model bundle",
        description=(
            "Train one global autoencoder on windows of normal data (all selected assets share "
            "the model and the scaler; train separately with --assets for per-group models), "
            "calibrate the alert threshold on held-out later data, and export a verified ONNX "
            "bundle with its manifest and a training report."
        ),
    )
    p.add_argument("--data", type=Path, required=True, help="CSV/Parquet file or directory")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument(
        "--model",
        default="dense",
        choices=("dense", "conv", "lstm", "vae", "pca", "hotelling"),
        help="model family (pca: the PCA Q/T² baseline; hotelling: T² of each window's "
        "per-sensor level and fluctuation)",
    )
    p.add_argument("--window", type=int, default=32, help="readings per window (default 32)")
    p.add_argument("--stride", type=int, default=1, help="training window stride (default 1)")
    p.add_argument("--columns", type=csv_list, help="sensor columns to use, in order")
    p.add_argument("--timestamp-column", default="timestamp", help="'' if the data has none")
    p.add_argument("--asset-column", default="asset", help="'' if the data is one series")
    p.add_argument("--label-column", default="label", help="rows with label 1 are left out")
    p.add_argument("--interval", type=duration, help="sampling interval (default: inferred)")
    p.add_argument("--assets", help="glob selecting assets, e.g. 'pump-*'")
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--threshold-rule", default="quantile", choices=("quantile", "pot"))
    p.add_argument("--threshold-quantile", type=float, default=0.99)
    p.add_argument("--threshold-factor", type=float, default=1.5)
    p.add_argument(
        "--pot-level", type=float, default=0.98, help="POT: quantile above which the tail is fitted"
    )
    p.add_argument("--pot-risk", type=float, default=1e-4, help="POT: per-window false-alarm risk")
    _add_model_options(p)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=6, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--name", help="model name recorded in the manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--sign-key",
        type=Path,
        help="sign the bundle with this Ed25519 private key (PEM) once it is written",
    )
    p.add_argument("--key-password-file", type=Path, help="password of an encrypted --sign-key")
    p.set_defaults(handler=_run_train)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """How a bundle is trained and what its graph adds to the score (``--hyper``,
    ``--noise-std``, ``--mask-fraction``, ``--mask-unit``, ``--sensor-weighting``, ``--modes``,
    ``--flatline``, ``--bias-factor``), shared by ``train`` and ``evaluate``."""
    p.add_argument(
        "--hyper",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model hyperparameter, e.g. --hyper n_components=4 --hyper per_step=false",
    )
    p.add_argument(
        "--noise-std", type=float, default=0.0, help="denoising: input noise (normalised units)"
    )
    p.add_argument(
        "--mask-fraction", type=float, default=0.0, help="masked reconstruction: share zeroed"
    )
    p.add_argument("--mask-unit", default="reading", choices=("reading", "sensor", "time"))
    p.add_argument(
        "--sensor-weighting",
        default="none",
        choices=("none", "balanced"),
        help="none (default): the score is the plain mean of the sensors' errors; balanced: "
        "each sensor's error in units of its mean on validation windows",
    )
    p.add_argument(
        "--modes",
        type=int,
        default=0,
        help="operating modes (k-means on each window's mean per sensor) with a threshold "
        "each; 0 (default): one threshold",
    )
    p.add_argument(
        "--flatline",
        default="auto",
        choices=("auto", "off"),
        help="auto (default): a window in which a sensor that always varies in the normal data "
        "is exactly constant (stuck) scores at least twice the threshold; off: no such check",
    )
    p.add_argument(
        "--bias-factor",
        type=float,
        default=0.0,
        help="above 1: a window in which a sensor's mean signed reconstruction residual exceeds "
        "this multiple of its largest on normal validation windows scores above the threshold "
        "(offsets, leaks, drifts); 0 (default): no such check",
    )


def _run_train(args: argparse.Namespace) -> int:
    try:
        from training.calibrate import rule_from_options
        from training.fit import FitConfig
        from training.pipeline import TrainConfig, train_bundle
    except ImportError as exc:
        raise DependencyError(
            f"'plantwatch train' needs the training extra ({exc.name} is missing): "
            "pip install 'plantwatch[train]'"
        ) from None
    rule = rule_from_options(
        args.threshold_rule,
        q=args.threshold_quantile,
        factor=args.threshold_factor,
        level=args.pot_level,
        risk=args.pot_risk,
    )
    if not 0.0 < args.validation_fraction < 1.0:
        raise ConfigError("--validation-fraction must be between 0 and 1")
    # Read the key before hours of training, not after.
    sign_key = (
        _signing_key(args.sign_key, args.key_password_file) if args.sign_key is not None else None
    )
    config = TrainConfig(
        data=args.data,
        out=args.out,
        family=args.model,
        window=args.window,
        stride=args.stride,
        columns=args.columns,
        timestamp_column=args.timestamp_column or None,
        asset_column=args.asset_column or None,
        label_column=args.label_column,
        interval_s=args.interval,
        assets=args.assets,
        validation_fraction=args.validation_fraction,
        threshold=rule,
        fit=FitConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            patience=args.patience,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
            noise_std=args.noise_std,
            mask_fraction=args.mask_fraction,
            mask_unit=args.mask_unit,
        ),
        hyperparameters=_parse_hyper(args.hyper),
        name=args.name,
        sensor_weighting=args.sensor_weighting,
        modes=args.modes,
        flatline=args.flatline,
        bias_factor=args.bias_factor,
    )
    result = train_bundle(config)
    m = result.bundle.manifest
    print(f"bundle  {result.bundle.path}")
    if sign_key is not None:
        from monitor.bundle import sign_bundle
        from monitor.signing import fingerprint

        signature = sign_bundle(result.bundle.path, sign_key)
        print(f"signed  {signature} (key {fingerprint(sign_key.public_key())})")
    print(f"report  {result.report[-1]}")
    print(
        f"model   {m.model.name} {m.model.version}: threshold {m.threshold.value:.4g}, "
        f"{m.validation.above_threshold:.2%} of validation windows above it"
    )
    return 0


def _parse_hyper(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs: true/false, ints, floats, comma lists of ints; else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--hyper {item!r}: expected KEY=VALUE")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif "," in raw:
            try:
                value = tuple(int(part) for part in raw.split(","))
            except ValueError:
                raise ConfigError(f"--hyper {item!r}: a list must hold integers") from None
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    continue
        out[key] = value
    return out


def _add_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "inspect",
        help="verify a model bundle and print its manifest",
        description="Verify a bundle (schema, ONNX hash) and print its manifest in human form.",
    )
    p.add_argument("bundle", type=Path, help="bundle directory")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=[],
        metavar="PUBLIC.pem",
        help="also require a signature by this public key (repeatable), as model.trusted_keys",
    )
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from monitor.bundle import describe, load_bundle
    from monitor.signing import load_trusted_keys

    keys = load_trusted_keys(args.trusted_key, setting="--trusted-key")
    bundle = load_bundle(args.bundle, trusted_keys=keys)
    if args.json:
        print(json.dumps(bundle.manifest.model_dump(mode="json"), indent=2))
    else:
        print(describe(bundle))
    return 0


def _add_sign(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sign",
        help="sign a model bundle (Ed25519), or make a signing key pair",
        description=(
            "Verify a bundle (schema, ONNX hash) and write manifest.sig, an Ed25519 signature of "
            "manifest.json's exact bytes, which serve checks when model.trusted_keys is set. "
            "Keys are PEM: openssl genpkey -algorithm ed25519 -out key.pem; openssl pkey -in "
            "key.pem -pubout -out key.pub (or --generate-key). Keep the private key on the "
            "release machine, never on the plant servers."
        ),
    )
    p.add_argument("bundle", type=Path, nargs="?", help="bundle directory to sign")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--key", type=Path, metavar="PRIVATE.pem", help="Ed25519 private key")
    what.add_argument(
        "--generate-key",
        type=Path,
        metavar="DIR",
        help="write a new key pair DIR/plantwatch-signing.pem (0600) and .pub, then exit",
    )
    p.add_argument("--key-password-file", type=Path, help="password of an encrypted --key")
    p.set_defaults(handler=_run_sign)


def _signing_key(key: Path, password_file: Path | None) -> Ed25519PrivateKey:
    from monitor.signing import load_private_key

    password = None
    if password_file is not None:
        try:
            password = password_file.read_bytes().removesuffix(b"\n")
        except OSError as exc:
            raise ConfigError(
                f"--key-password-file {password_file}: cannot read ({exc.strerror})"
            ) from None
    return load_private_key(key, password)


def _run_sign(args: argparse.Namespace) -> int:
    from monitor.bundle import sign_bundle
    from monitor.signing import fingerprint, generate_key_pair, load_trusted_keys

    if args.generate_key is not None:
        if args.bundle is not None:
            raise ConfigError("--generate-key makes a key pair only; sign with --key afterwards")
        private, public = generate_key_pair(args.generate_key)
        (trusted,) = load_trusted_keys([public], setting="generated key")
        print(f"private {private}  (keep it off the plant servers)")
        print(f"public  {public}  (list it in model.trusted_keys)")
        print(f"key     {trusted.fingerprint}")
        return 0
    if args.bundle is None:
        raise ConfigError("sign: give the bundle directory to sign")
    key = _signing_key(args.key, args.key_password_file)
    signature = sign_bundle(args.bundle, key)
    print(f"signed  {args.bundle} -> {signature} (key {fingerprint(key.public_key())})")
    return 0


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the monitor: score Kafka readings, raise alerts, expose metrics",
        description=(
            "Consume readings from Kafka, score each asset's sliding windows with the model "
            "bundle, produce alert events to the alerts topic (and deliver them to webhooks), "
            "and serve /metrics, /healthz and /readyz. Settings come from --config (YAML) and "
            "PLANTWATCH_<SECTION>__<FIELD> environment variables. SIGTERM/SIGINT stop "
            "gracefully (a second signal exits at once); SIGHUP reloads the model."
        ),
    )
    p.add_argument("--config", type=Path, help="YAML settings file (default: $PLANTWATCH_CONFIG)")
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_serve(_settings_from(args)))


async def _serve(settings: Settings) -> int:
    import asyncio
    import signal

    from monitor.service import Service

    service = Service(settings)
    _install_signals(service.request_stop, settings.shutdown_deadline_s)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, service.request_reload)
    try:
        await service.start()
        await service.run()
    finally:
        await service.stop()
    logger.info("stopped cleanly")
    return 0


def _add_notify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "notify",
        help="deliver alert events from the alerts topic to webhooks (alone, without serve)",
        description=(
            "Consume the alerts topic and deliver every event to the configured webhooks "
            "(generic JSON or Alertmanager), with retries, HMAC signatures and idempotency keys; "
            "events that cannot be delivered are parked on the delivery dead-letter topic. "
            "Use it when serve runs with delivery.enabled: false. Same settings as serve."
        ),
    )
    p.add_argument("--config", type=Path, help="YAML settings file (default: $PLANTWATCH_CONFIG)")
    p.set_defaults(handler=_run_notify)


def _settings_from(args: argparse.Namespace) -> Settings:
    import os

    from monitor.config import load_settings

    path = args.config
    if path is None and os.environ.get("PLANTWATCH_CONFIG"):
        path = Path(os.environ["PLANTWATCH_CONFIG"])
    return load_settings(path)


def _run_notify(args: argparse.Namespace) -> int:
    import asyncio

    return asyncio.run(_notify(_settings_from(args)))


async def _notify(settings: Settings) -> int:
    import asyncio

    from prometheus_client import CollectorRegistry

    from monitor.http import OpsServer
    from monitor.metrics import Metrics
    from monitor.notify import Notifier

    if not settings.delivery.webhooks:
        raise ConfigError("delivery.webhooks: no webhook endpoints configured")
    registry = CollectorRegistry()
    stop = asyncio.Event()
    _install_signals(stop.set, settings.shutdown_deadline_s)
    async with (
        OpsServer(
            registry,
            host=settings.http.host,
            port=settings.http.port,
            readiness=lambda: {"started": True},
        ),
        Notifier(settings, Metrics(registry)) as notifier,
    ):
        await notifier.run(stop)
    logger.info("stopped cleanly")
    return 0


def awaiting(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits, outermost first: ``file:line function`` along its chain of awaits
    (what a shutdown that overran its deadline was still waiting for)."""
    where = []
    step: Any = task.get_coro()
    while step is not None:
        frame = getattr(step, "cr_frame", None) or getattr(step, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            where.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
        step = getattr(step, "cr_await", None) or getattr(step, "gi_yieldfrom", None)
    return f"{task.get_name()}: {' > '.join(where) or repr(task)}"


def _install_signals(request_stop: Callable[[], None], deadline: float) -> None:
    """SIGTERM/SIGINT stop gracefully within ``deadline``; a second signal exits at once."""
    import asyncio
    import os
    import signal

    loop = asyncio.get_running_loop()
    stopping = False

    def force_exit(reason: str) -> None:
        logger.error("%s: exiting without a clean shutdown", reason)
        for task in asyncio.all_tasks(loop):
            logger.error("still waiting: %s", awaiting(task))
        logging.shutdown()
        os._exit(1)

    def on_signal(sig: signal.Signals) -> None:
        nonlocal stopping
        if stopping:
            force_exit(f"second {sig.name}")
        stopping = True
        logger.info("%s: stopping (deadline %gs)", sig.name, deadline)
        loop.call_later(deadline, force_exit, f"shutdown deadline of {deadline:g}s passed")
        request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure detection quality on labelled data through the service's scoring path",
        description=(
            "Train bundles and replay labelled test data through the exported ONNX graph, the "
            "window store and the alert detector, as 'serve' would. Protocol 'skab': the "
            "published SKAB protocol on a SKAB copy. Protocol 'generic': DATA/train/*.csv "
            "(normal) and DATA/test/*.csv (with a 0/1 label column)."
        ),
    )
    p.add_argument("--protocol", required=True, choices=("skab", "generic"))
    p.add_argument("--data", type=Path, required=True, help="SKAB copy or generic directory")
    p.add_argument("--json", type=Path, help="write the figures to this JSON file")
    p.add_argument("--report", type=Path, help="write report.md and one PNG per test series")
    p.add_argument("--model", default="dense", help="model family (see 'train --help')")
    p.add_argument("--window", type=int, help="window length (default: 16 skab, 32 generic)")
    p.add_argument("--epochs", type=int, help="max epochs (default: 40 skab, 60 generic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold-rule", default="quantile", choices=("quantile", "pot"))
    p.add_argument("--threshold-quantile", type=float, default=0.99)
    p.add_argument("--threshold-factor", type=float, default=1.5)
    p.add_argument("--pot-level", type=float, default=0.98, help="POT: tail fitted above this")
    p.add_argument("--pot-risk", type=float, default=1e-4, help="POT: per-window false-alarm risk")
    _add_model_options(p)
    p.add_argument(
        "--rule",
        default="service",
        choices=("service", "reference"),
        help="'reference': SKAB's offline Conv-AE rule, for comparison only",
    )
    p.add_argument("--k", type=int, help="alert opens on k of the last n windows")
    p.add_argument("--n", type=int)
    p.add_argument("--m", type=int, help="quiet windows that resolve an alert")
    p.add_argument(
        "--hysteresis", type=float, default=0.8, help="quiet: score below this x threshold"
    )
    p.add_argument(
        "--hold-sensor",
        help="the service's detector.hold: no alert opens while this sensor reads at or below "
        "--running-above in a window (stopped, stopping, starting), nor --hold-seconds after",
    )
    p.add_argument("--running-above", type=float, default=0.0, help="with --hold-sensor")
    p.add_argument("--hold-seconds", type=float, default=600.0, help="with --hold-sensor")
    p.add_argument("--separator", default=",", help="generic: CSV separator")
    p.add_argument("--timestamp-column", default="timestamp", help="generic: '' if none")
    p.add_argument("--label-column", default="label", help="generic: 0/1 label column")
    p.add_argument("--asset-column", default="asset", help="generic: '' if one series per file")
    p.add_argument(
        "--ignore-columns", type=csv_list, default=(), help="columns that are not model inputs"
    )
    p.add_argument("--bundle", type=Path, help="generic: evaluate this bundle, do not train")
    p.add_argument(
        "--asset-groups",
        type=csv_list,
        default=(),
        help="generic: asset patterns, e.g. 'pump-*,compressor-*': one bundle per group, each "
        "series scored by its group's (one service per group: input.other_asset_patterns)",
    )
    p.add_argument(
        "--via-kafka",
        action="store_true",
        help="generic: also stream the test files through Kafka and a real serve, and check "
        "that its window scores and alert events equal the offline ones",
    )
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka for --via-kafka")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: SKAB's per-file models are too small to gain from more; "
        "0: torch's default)",
    )
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    try:
        import training.evaluate  # noqa: F401 - fail early, before any work, without the extra
    except ImportError as exc:
        raise DependencyError(
            f"'plantwatch evaluate' needs the training extra ({exc.name} is missing): "
            "pip install 'plantwatch[train]'"
        ) from None
    if args.via_kafka and args.protocol != "generic":
        raise ConfigError("--via-kafka replays the generic protocol's test files only")
    if args.asset_groups and (args.protocol != "generic" or args.bundle):
        raise ConfigError("--asset-groups is for the generic protocol, without --bundle")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import tempfile

    # The bundles stay on disk until the end: --via-kafka serves the trained one.
    with tempfile.TemporaryDirectory(prefix="plantwatch-eval-") as work:
        return _evaluate_in(args, Path(work))


def _evaluate_in(args: argparse.Namespace, work: Path) -> int:
    from training.evaluate import AlertOptions, GenericOptions, ModelOptions, evaluate

    alerts = AlertOptions.from_args(args)
    result = evaluate(
        args.protocol,
        args.data,
        model=ModelOptions(
            family=args.model,
            window=args.window,
            epochs=args.epochs,
            seed=args.seed,
            threshold_rule=args.threshold_rule,
            threshold_quantile=args.threshold_quantile,
            threshold_factor=args.threshold_factor,
            pot_level=args.pot_level,
            pot_risk=args.pot_risk,
            hyperparameters=_parse_hyper(args.hyper),
            ignore_sensors=tuple(args.ignore_columns or ()),
            sensor_weighting=args.sensor_weighting,
            modes=args.modes,
            flatline=args.flatline,
            bias_factor=args.bias_factor,
            noise_std=args.noise_std,
            mask_fraction=args.mask_fraction,
            mask_unit=args.mask_unit,
        ),
        alerts=alerts,
        generic=GenericOptions(
            separator=args.separator,
            timestamp_column=args.timestamp_column or None,
            label_column=args.label_column,
            asset_column=args.asset_column or None,
            ignore_columns=tuple(args.ignore_columns or ()),
            bundle=args.bundle,
            asset_groups=tuple(args.asset_groups),
        ),
        work_dir=work,
        progress=lambda line: print(f"  {line}", file=sys.stderr),
    )
    for key, value in result.figures.items():
        print(f"{key:<32} {value:.4g}")
    agreement = None
    if args.via_kafka:
        from training.evaluate.online import agree_via_kafka
        from training.evaluate.protocols import group_of

        # With asset groups (result.bundles: group -> bundle, in their order), the first group's
        # bundle serves as model.path, each other's as a route for the series it scored offline.
        (_, first), *others = result.bundles.items()
        names: dict[str | None, list[str]] = defaultdict(list)
        for r in result.replays:
            names[group_of(r.series.asset, args.asset_groups)].append(r.series.name)
        agreement = agree_via_kafka(
            result.replays,
            Path(first),
            alerts.detector(result.options["model"]["window"]),
            bootstrap=args.bootstrap,
            hold=alerts.hold_settings(),
            routes=[(Path(path), names[group]) for group, path in others],
        )
        result.extra["kafka_agreement"] = agreement.to_json()
        print(f"via kafka: {agreement.summary()}")
        for line in agreement.differences:
            print(f"  {line}")
    if args.json:
        print(f"json    {result.write_json(args.json)}")
    if args.report:
        print(f"report  {result.write_report(args.report)[0]}")
    if agreement is not None and not agreement.agree:
        print("error: the online run disagrees with the offline evaluation", file=sys.stderr)
        return 1
    return 0


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure throughput and memory against the local Kafka (from a source checkout)",
        description=(
            "Run bench/performance.py: consume limit, scoring limit, the real pipeline and a "
            "naive reference on pre-filled topics, plus memory per asset; writes "
            "bench/results/performance.md. Options after 'bench' go to the script "
            "(e.g. plantwatch bench --smoke)."
        ),
    )
    p.add_argument("options", nargs=argparse.REMAINDER, help="options for bench/performance.py")
    p.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "performance.py"
    if not script.is_file():
        raise DependencyError(
            "plantwatch bench runs bench/performance.py from a source checkout; "
            f"there is none at {script.parent}"
        )
    return subprocess.call([sys.executable, str(script), *args.options])


# --- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plantwatch",
        description=(
            "Streaming industrial anomaly monitor: simulate a plant, train autoencoders on "
            "normal sensor data, and inspect the ONNX model bundles the monitor scores with."
        ),
    )
    parser.add_argument("--version", action="version", version=f"plantwatch {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    parser.add_argument("--log-format", default="text", choices=("text", "json"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_simulate,
        _add_train,
        _add_inspect,
        _add_sign,
        _add_serve,
        _add_notify,
        _add_evaluate,
        _add_bench,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    handler: Handler = args.handler
    try:
        return handler(args)
    except PlantwatchError as exc:
        print(f"plantwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plantwatch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
