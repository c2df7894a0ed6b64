"""The Helm chart (deploy/helm/modelworks), rendered offline by Helm's own Go library (the helm-python-sdk wheel)
with several sets of values, linted, and every manifest checked against the Kubernetes API schemas of the oldest
and the newest version the chart supports (kubernetes-validate, strict: no unknown fields). The ConfigMap's
modelworks.yaml is checked by the server's own settings validation. What is not checked here: see the README."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from modelworks.settings import settings_from_dict  # noqa: E402

CHART = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "modelworks"
KUBERNETES = ["1.25.0", "1.37.0"]  # the chart's kubeVersion floor, and the newest schemas the package has

SECRETS = {"apiKey": {"existingSecret": "mw-admin-key"}, "database": {"existingSecret": "mw-database"},
           "redis": {"existingSecret": "mw-redis"}}

FULL = {
    **copy.deepcopy(SECRETS),
    "image": {"repository": "registry.example.com/ai/modelworks",
              "digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "registry"}],
    "database": {"existingSecret": "mw-database", "urlKey": "pooled-url", "directUrlKey": "direct-url",
                 "transactionPooler": True, "poolSize": 10, "maxOverflow": 0},
    "secretEnv": [{"name": "AZURE_OPENAI_KEY", "secretName": "azure-openai", "key": "api-key"}],
    "backends": {
        "vllm-llama": {"type": "openai", "base_url": "http://vllm.inference.svc:8000/v1",
                       "model": "meta-llama/Llama-3.1-8B-Instruct", "region": "westeurope", "data_zone": "EU"},
        "azure-gpt4o": {"type": "azure_openai", "endpoint": "https://example.openai.azure.com",
                        "deployment": "gpt-4o", "api_key_env": "AZURE_OPENAI_KEY", "region": "swedencentral",
                        "data_zone": "EU"},
    },
    "deployments": {
        "llama-3.1-8b": {"backends": ["vllm-llama"], "type": "DataZoneStandard", "data_zone": "EU",
                         "tpm": 200000},
        "gpt-4o": {"backend": "azure-gpt4o", "type": "DataZoneStandard", "data_zone": "EU"},
    },
    "config": {"files": {"storage": "database"}, "routing": {"max_attempts": 2},
               "responses": {"retention_days": 7}, "metrics": {"path": "/metrics"}},
    "drain": {"timeoutSeconds": 45, "preStopSeconds": 10},
    "models": {"existingClaim": "models"},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "networkPolicy": {"enabled": True,
                      "ingressFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
                      "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                                  "ports": [{"port": 5432}, {"port": 6379}, {"port": 8000}]}]},
    "podAnnotations": {"example.com/owner": "platform"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ai", "effect": "NoSchedule"}],
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "modelworks"}}}],
    "extraEnv": [{"name": "MODELWORKS__SERVER__LOG_LEVEL", "value": "warning"}],
}

VALUE_SETS = {
    "minimal": SECRETS,
    "full": FULL,
    "one-replica-without-redis": {"apiKey": {"existingSecret": "k"}, "database": {"existingSecret": "d"},
                                  "replicaCount": 1},
    "no-hook-own-service-account": {**SECRETS, "migration": {"enabled": False}, "replicaCount": 4,
                                    "serviceAccount": {"create": False, "name": "ai-gateway"},
                                    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
                                    "service": {"type": "LoadBalancer", "port": 443}},
}


def render(values: dict) -> list[dict]:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        out = chart.render(values, name="ai", namespace="platform", is_install=True)
    docs = []
    for path, manifest in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(manifest) if doc)
    return docs


def kinds(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes(name):
    docs = render(VALUE_SETS[name])
    assert {"Deployment", "Service", "ConfigMap"} <= set(kinds(docs))
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema offline (checked by hand below)
        for version in KUBERNETES:
            kubernetes_validate.validate(doc, version, strict=True)
    config = yaml.safe_load(kinds(docs)["ConfigMap"]["data"]["modelworks.yaml"])
    settings = settings_from_dict(config)  # the server would start with it
    assert settings.server.host == "0.0.0.0" and settings.server.data_dir == "/data"
    assert "Secret" not in kinds(docs), "the chart makes no Secret: keys and URLs come from the user's own"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_finds_nothing(name):
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == [], report


def test_the_deployment_drains_before_kubernetes_kills_it():
    docs = kinds(render(FULL))
    deployment = docs["Deployment"]
    spec = deployment["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in spec  # the HorizontalPodAutoscaler owns it
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sleep", "10"]
    assert pod["terminationGracePeriodSeconds"] == 10 + 45 + 30
    config = yaml.safe_load(docs["ConfigMap"]["data"]["modelworks.yaml"])
    assert config["server"]["drain_timeout_s"] == 45
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert not security["allowPrivilegeEscalation"] and security["capabilities"]["drop"] == ["ALL"]
    assert container["image"] == "registry.example.com/ai/modelworks@sha256:" + "ab" * 32
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
    labels = pod and spec["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = docs[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    job_labels = docs["Job"]["spec"]["template"]["metadata"]["labels"]
    assert not spec["selector"]["matchLabels"].items() <= job_labels.items()  # no gateway selector takes it in
    config = yaml.safe_load(docs["ConfigMap"]["data"]["modelworks.yaml"])
    assert (config["server"]["data_dir"], config["server"]["model_cache_dir"]) == ("/data", "/data/models")
    monitor = docs["ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["port"] == "http" and monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= docs["Service"]["metadata"]["labels"].items()


def test_secrets_come_from_the_users_own():
    docs = kinds(render(FULL))
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]}
    assert env["MODELWORKS_API_KEY"] == {"name": "mw-admin-key", "key": "api-key"}
    assert env["MODELWORKS__DATABASE__URL"] == {"name": "mw-database", "key": "pooled-url"}
    assert env["MODELWORKS__QUOTA__REDIS_URL"] == {"name": "mw-redis", "key": "url"}
    assert env["AZURE_OPENAI_KEY"] == {"name": "azure-openai", "key": "api-key"}
    config = yaml.safe_load(docs["ConfigMap"]["data"]["modelworks.yaml"])
    assert config["database"]["transaction_pooler"] is True and config["quota"]["limiter"] == "redis"
    # the migration Job: a hook before install and upgrade, straight to PostgreSQL (not through the pooler)
    job = docs["Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["args"][:2] == ["db", "upgrade"]
    job_env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", e.get("value")) for e in migrate["env"]}
    assert job_env["MODELWORKS__DATABASE__URL"] == {"name": "mw-database", "key": "direct-url"}
    assert job_env["MODELWORKS_CONFIG"] == ""  # the Job runs before the ConfigMap exists


def test_one_replica_without_redis_limits_in_process():
    docs = kinds(render(VALUE_SETS["one-replica-without-redis"]))
    config = yaml.safe_load(docs["ConfigMap"]["data"]["modelworks.yaml"])
    assert config["quota"]["limiter"] == "memory"
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert "MODELWORKS__QUOTA__REDIS_URL" not in {e["name"] for e in container["env"]}


@pytest.mark.parametrize("values, message", [
    ({**SECRETS, "podDisruptionBudget": {"enabled": True, "minAvailable": None}}, "set minAvailable or maxUnavailable"),
    ({"apiKey": {"existingSecret": "k"}, "redis": {"existingSecret": "r"}}, "database.existingSecret is required"),
    ({"database": {"existingSecret": "d"}, "redis": {"existingSecret": "r"}}, "apiKey.existingSecret is required"),
    ({"apiKey": {"existingSecret": "k"}, "database": {"existingSecret": "d"}}, "redis.existingSecret is required"),
])
def test_missing_secrets_are_named(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


@pytest.mark.parametrize("values", [
    {"replicaCount": 0},
    {"replicas": 2},  # a typo: unknown keys are refused
    {"drain": {"timeoutSeconds": -1}},
    {"config": {"backends": {}}},  # backends go in `backends`
    {"image": {"repository": "x", "digest": "latest"}},
    {"secretEnv": [{"name": "1BAD", "secretName": "s", "key": "k"}]},
    {"backends": {"x": {"base_url": "http://x"}}},  # no type
])
def test_bad_values_are_refused_by_the_schema(values):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmError):
            chart.validate_schema({**copy.deepcopy(SECRETS), **values})
