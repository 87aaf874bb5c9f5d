"""Structural checks of deploy/: the manifests, images and units agree with the code.

No Docker engine or cluster here, so these parse the files and compare them with what the code
defines: HTTP routes, the default port, settings names, extras, metric names. promtool and amtool
checks run in tests/integration/test_observability.py.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from monitor.config import ENV_PREFIX, HttpSettings, Settings, env_overrides, load_settings
from monitor.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
HTTP_SOURCE = (ROOT / "monitor" / "http.py").read_text()
ROUTES = set(re.findall(r'add_get\("(/[a-z]+)"', HTTP_SOURCE))
DEFAULT_PORT = HttpSettings().port


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _k8s(kind: str, name: str) -> dict[str, Any]:
    for path in sorted((K8S / "base").glob("*.yaml")):
        for doc in _docs(path):
            if doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind}/{name} in deploy/k8s/base")


def _field_exists(path: list[str]) -> bool:
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return i == len(path) - 1
    return True


def _check_env_names(names: list[str]) -> None:
    for name in names:
        if not name.startswith(ENV_PREFIX) or name == "PLANTWATCH_CONFIG":
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        assert _field_exists(path), f"{name} names no setting"


def test_routes_are_what_the_manifests_expect() -> None:
    assert {"/metrics", "/healthz", "/readyz"} <= ROUTES
    assert DEFAULT_PORT == 9308


@pytest.mark.parametrize(
    ("kind", "name"), [("StatefulSet", "plantwatch-serve"), ("Deployment", "plantwatch-notify")]
)
def test_workloads_probe_the_real_endpoints(kind: str, name: str) -> None:
    doc = _k8s(kind, name)
    pod = doc["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": DEFAULT_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["path"] in ROUTES
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == str(DEFAULT_PORT)
    assert ann["prometheus.io/path"] in ROUTES
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # Graceful stop fits in the grace period.
    settings = _configmap_settings()
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.shutdown_deadline_s
    env = container["env"]
    _check_env_names([e["name"] for e in env])
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in env
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert "PLANTWATCH_KAFKA__SASL_PASSWORD" in secrets
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert str(settings.model.path).startswith("/models/")
    assert container["args"] == [{"StatefulSet": "serve", "Deployment": "notify"}[kind]]


def _configmap_settings() -> Settings:
    text = _k8s("ConfigMap", "plantwatch")["data"]["plantwatch.yaml"]
    return Settings.model_validate(
        _merge(yaml.safe_load(text), env_overrides({"PLANTWATCH_KAFKA__SASL_PASSWORD": "x"}))
    )


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_configmap_is_valid_settings_listening_in_the_pod() -> None:
    settings = _configmap_settings()
    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == DEFAULT_PORT
    assert settings.kafka.sasl_password is not None  # from the Secret, not the ConfigMap
    assert "sasl_password" not in _k8s("ConfigMap", "plantwatch")["data"]["plantwatch.yaml"]


def test_notify_takes_webhooks_from_the_secret() -> None:
    container = _k8s("Deployment", "plantwatch-notify")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["PLANTWATCH_DELIVERY__WEBHOOKS"]["valueFrom"]["secretKeyRef"]["key"] == "webhooks.json"
    )
    hooks = [{"name": "am", "url": "http://am:9093/api/v2/alerts", "format": "alertmanager"}]
    overrides = env_overrides({"PLANTWATCH_DELIVERY__WEBHOOKS": json.dumps(hooks)})
    assert overrides == {"delivery": {"webhooks": hooks}}


def test_pdb_and_services_select_the_pods() -> None:
    for name in ("plantwatch-serve", "plantwatch-notify"):
        pdb = _k8s("PodDisruptionBudget", name)
        svc = _k8s("Service", name)
        kind = "StatefulSet" if name.endswith("serve") else "Deployment"
        labels = _k8s(kind, name)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert svc["spec"]["selector"].items() <= labels.items()
        assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_kustomizations_list_existing_files_and_the_gpu_overlay_asks_for_a_gpu() -> None:
    for kfile in K8S.rglob("kustomization.yaml"):
        doc = yaml.safe_load(kfile.read_text())
        for res in doc.get("resources", []):
            assert (kfile.parent / res).exists(), f"{kfile}: {res}"
        for patch in doc.get("patches", []):
            assert (kfile.parent / patch["path"]).exists()
    (patch,) = _docs(K8S / "overlays" / "gpu" / "serve-gpu.yaml")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "serve"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"PLANTWATCH_MODEL__DEVICE": "cuda"}
    _check_env_names(list(env))
    assert patch["spec"]["template"]["metadata"]["labels"]["plantwatch.io/accelerator"] == "cuda"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles(name: str) -> None:
    text = (DEPLOY / "docker" / name).read_text()
    extra = "gpu" if name.endswith("gpu") else "cpu"
    assert f"pip install '.[{extra}]'" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf"^{extra} = \[", pyproject, re.M), f"no [{extra}] extra"
    (health,) = [line for line in text.splitlines() if "/healthz" in line and "CMD" in line]
    assert re.search(r"127\.0\.0\.1:%s(/[a-z]+)", health).group(1) in ROUTES  # type: ignore[union-attr]
    assert "HEALTHCHECK" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users
    assert not users[-1].startswith(("root", "0"))
    assert f"EXPOSE {DEFAULT_PORT}" in text
    assert "PLANTWATCH_HTTP__HOST=0.0.0.0" in text
    _check_env_names(re.findall(r"\b(PLANTWATCH_[A-Z_]+)=", text))
    assert "/models" in text


def test_compose_stack() -> None:
    doc = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {
        "kafka",
        "serve",
        "notify",
        "prometheus",
        "alertmanager",
        "grafana",
        "simulator",
    } <= set(services)
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    base = DEPLOY / "compose"
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                if source == "./bundles":
                    continue  # the user's trained bundle
                assert (base / source).exists(), source
    settings = load_settings(base / "plantwatch.yaml", environ={})
    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == DEFAULT_PORT
    assert settings.delivery.webhooks[0].format == "alertmanager"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["plantwatch"]["static_configs"][0]["targets"] == [f"serve:{DEFAULT_PORT}"]
    assert jobs["plantwatch-notify"]["static_configs"][0]["targets"] == [f"notify:{DEFAULT_PORT}"]


def test_systemd_units() -> None:
    for name, command in (("plantwatch.service", "serve"), ("plantwatch-notify.service", "notify")):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(DEPLOY / "systemd" / name)
        service = parser["Service"]
        assert service["ExecStart"].split()[-1] == command
        assert service["Restart"] == "on-failure"
        for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "EnvironmentFile"):
            assert key in service, f"{name}: {key}"
        assert service["ProtectSystem"] == "strict"
        assert int(service["TimeoutStopSec"]) > Settings.model_fields["shutdown_deadline_s"].default


def _metric_names() -> set[str]:
    metrics = Metrics(CollectorRegistry())
    names = {"up"}
    for family in metrics.registry.collect():
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    # Labelled counters and histograms only appear once used; their names are fixed anyway.
    for attr in vars(metrics).values():
        name = getattr(attr, "_name", None)
        kind = getattr(attr, "_type", None)
        if name:
            names.add(name)
            if kind == "counter":
                names.add(name + "_total")
            if kind == "histogram":
                names.update(name + s for s in ("_bucket", "_sum", "_count"))
    return names


def _dashboard_module() -> Any:
    spec = importlib.util.spec_from_file_location("pw_dash", DEPLOY / "grafana" / "dashboard.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pw_dash"] = module
    spec.loader.exec_module(module)
    return module


NAME = re.compile(r"\b((?:plantwatch_|process_)[a-z0-9_]+|up)\b(?!\s*\()")


def test_dashboard_and_rules_name_only_real_metrics() -> None:
    known = _metric_names()
    dash = _dashboard_module()
    exprs = list(dash.expressions())
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    unknown = {n for e in exprs for n in NAME.findall(e)} - known
    assert not unknown, unknown
    # The generated JSON is up to date with the generator.
    assert (DEPLOY / "grafana" / "dashboards" / "plantwatch.json").read_text() == dash.render()
    doc = json.loads(dash.render())
    uids = {p["datasource"]["uid"] for p in doc["panels"] if "datasource" in p}
    assert uids == {"${datasource}"}
    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert ds["datasources"][0]["type"] == "prometheus"


def test_dashboard_png_is_small() -> None:
    png = DEPLOY / "grafana" / "dashboard.png"
    assert png.exists()
    assert png.stat().st_size < 500_000


def test_yaml_files_parse_and_lint() -> None:
    # deploy/local/plantwatch.example.yaml belongs to the service's docs, not to these manifests.
    files = [p for p in DEPLOY.rglob("*.y*ml") if p.parent.name != "local"]
    for path in files:
        _docs(path)
    beside = Path(sys.executable).with_name("yamllint")
    yamllint = shutil.which("yamllint") or (str(beside) if beside.exists() else None)
    if yamllint:  # Debian's yamllint, or the dev extra's
        done = subprocess.run(
            [yamllint, "-c", str(DEPLOY / ".yamllint.yml"), *map(str, files)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout
