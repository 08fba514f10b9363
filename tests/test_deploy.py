"""deploy/kubernetes: valid manifests for the Kubernetes named here, wired the way a fleet needs."""

from __future__ import annotations

import copy
import secrets
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from mirror.config import Config, ConfigError, load
from mirror.http.drain import AFTER_DRAIN_GRACE

DEPLOY = Path(__file__).parent.parent / "deploy" / "kubernetes"
# The oldest release the example is written for; kubernetes-validate ships its schemas.
KUBERNETES = "1.30"
POD_IP = "10.244.1.7"

Manifest = dict[str, Any]


def manifests() -> list[Manifest]:
    """Every document of every YAML file under deploy/kubernetes."""
    paths = sorted([*DEPLOY.glob("**/*.yaml"), *DEPLOY.glob("**/*.yml")])
    assert paths, f"no manifests under {DEPLOY}"
    return [doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def the(kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests() if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec() -> Manifest:
    spec: Manifest = the("StatefulSet", "mirror")["spec"]["template"]["spec"]
    return spec


def container() -> Manifest:
    mirror: Manifest
    (mirror,) = pod_spec()["containers"]
    return mirror


def mounted(path: str) -> tuple[Manifest, str]:
    """The pod volume a file path lies on, and the path inside it (a ConfigMap's or Secret's key)."""
    for mount in container()["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume: Manifest
            (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
            return volume, path.removeprefix(prefix)
    raise AssertionError(f"{path} is on no volume of the mirror's container")


def env_var(name: str) -> Manifest:
    var: Manifest
    (var,) = [v for v in container()["env"] if v["name"] == name]
    return var


def peer_url() -> str:
    """MIRROR_FLEET_PEER_URL as the kubelet expands it, for a pod whose IP is POD_IP."""
    return str(env_var("MIRROR_FLEET_PEER_URL")["value"]).replace("$(POD_IP)", POD_IP)


def load_replica_config(tmp_path: Path, secret: str) -> Config:
    """The config a replica loads: the ConfigMap's file, the fleet secret, its environment."""
    command = container()["command"]
    config_path = command[command.index("--config") + 1]
    volume, key = mounted(config_path)
    config_file = tmp_path / "config.toml"
    config_file.write_text(the("ConfigMap", volume["configMap"]["name"])["data"][key])
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret)
    # The file names the secret where the pod mounts it; the test's copy is elsewhere.
    return load(config_file, env={"MIRROR_FLEET_PEER_URL": peer_url(), "MIRROR_FLEET_SECRET_FILE": str(secret_file)})


def placeholder_secret() -> str:
    """The value fleet-secret.yaml puts where the config's secret_file points."""
    data = tomllib.loads(the("ConfigMap", "mirror-config")["data"]["config.toml"])
    volume, key = mounted(data["fleet"]["secret_file"])
    return str(the("Secret", volume["secret"]["secretName"])["stringData"][key])


@pytest.mark.parametrize("manifest", manifests(), ids=lambda m: f"{m['kind']}/{m['metadata']['name']}")
def test_manifest_is_valid(manifest: Manifest) -> None:
    assert kubernetes_validate.validate(manifest, KUBERNETES, strict=True) == KUBERNETES


def test_strict_validation_catches_a_misspelt_field() -> None:
    """Strict schemas refuse unknown fields, which Kubernetes would otherwise drop in silence."""
    statefulset = copy.deepcopy(the("StatefulSet", "mirror"))
    statefulset["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES, strict=True)


def test_config_map_loads_with_the_mirrors_loader(tmp_path: Path) -> None:
    config = load_replica_config(tmp_path, secrets.token_hex(32))
    assert config.fleet is not None
    assert config.fleet.peer_url == f"http://{POD_IP}:5000"
    assert config.cache.directory == Path("/var/lib/mirror")
    assert config.upstreams["docker.io"].url == "https://registry-1.docker.io"
    assert config.server.port == container()["ports"][0]["containerPort"] == 5000


def test_the_placeholder_secret_is_refused(tmp_path: Path) -> None:
    """An operator who forgets to replace it gets replicas that do not start, not a known secret."""
    with pytest.raises(ConfigError, match="16 characters"):
        load_replica_config(tmp_path, placeholder_secret())


def test_three_replicas_with_a_cache_volume_each() -> None:
    statefulset = the("StatefulSet", "mirror")
    assert statefulset["spec"]["replicas"] == 3
    (name,) = [m["name"] for m in container()["volumeMounts"] if m["mountPath"] == "/var/lib/mirror"]
    claims = [claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]]
    assert name in claims, "the cache must be on a volumeClaimTemplate, not a pod volume"
    assert not any(v["name"] == name for v in pod_spec()["volumes"])


def test_probes() -> None:
    assert container()["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container()["livenessProbe"]["httpGet"]["path"] == "/healthz"  # stays 200 while draining


def test_kubernetes_waits_for_the_drain(tmp_path: Path) -> None:
    drain_timeout = load_replica_config(tmp_path, secrets.token_hex(32)).server.drain_timeout
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace > 30
    assert grace > drain_timeout + AFTER_DRAIN_GRACE + 5


def test_peer_url_comes_from_the_pod_ip() -> None:
    names = [v["name"] for v in container()["env"]]
    assert env_var("POD_IP")["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # The kubelet expands $(VAR) only for variables defined earlier in the list.
    assert names.index("POD_IP") < names.index("MIRROR_FLEET_PEER_URL")
    assert "$(POD_IP)" in env_var("MIRROR_FLEET_PEER_URL")["value"]
    # Service links would add MIRROR_<SERVICE>_* variables next to the mirror's own settings.
    assert pod_spec()["enableServiceLinks"] is False


def test_locked_down() -> None:
    pod = pod_spec()["securityContext"]
    own = container()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    volume, _ = mounted("/tmp/x")
    assert "emptyDir" in volume
    assert container()["resources"]["requests"]


def test_services_reach_the_pods(tmp_path: Path) -> None:
    """Redis's Service is where the config points; the NodePort forwards to the mirror's port."""
    fleet = load_replica_config(tmp_path, secrets.token_hex(32)).fleet
    assert fleet is not None
    redis_url = urlsplit(fleet.redis)
    redis_service = the("Service", redis_url.hostname)
    assert [p["port"] for p in redis_service["spec"]["ports"]] == [redis_url.port]
    redis_pods = the("Deployment", "mirror-redis")["spec"]["template"]["metadata"]["labels"]
    assert redis_service["spec"]["selector"].items() <= redis_pods.items()
    assert the("Deployment", "mirror-redis")["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7"

    nodeport = the("Service", "mirror")
    assert nodeport["spec"]["type"] == "NodePort"
    (port,) = nodeport["spec"]["ports"]
    assert port["nodePort"] == 30500
    assert port["targetPort"] in (5000, container()["ports"][0]["name"])
    mirror_pods = the("StatefulSet", "mirror")["spec"]["template"]["metadata"]["labels"]
    assert nodeport["spec"]["selector"].items() <= mirror_pods.items()
    policy = the("NetworkPolicy", "mirror-redis")
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"].items() <= mirror_pods.items()
