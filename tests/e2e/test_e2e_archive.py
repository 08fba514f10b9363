"""Sites without internet, with real Docker: `mirror export --format docker` then `docker load`;
`docker save` then `mirror import`, and Docker pulls that image from a mirror whose upstream is unreachable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_parts import MIRROR_CLI, DockerClient, Upstream, amd64, config_digest, run
from support import MirrorProcess

pytestmark = pytest.mark.e2e


def test_docker_load_of_an_export_and_import_of_a_docker_save(
    hub: Upstream, e2e_mirror: MirrorProcess, docker_client: DockerClient, tmp_path: Path
) -> None:
    images = hub.images["archive"]
    names = ["archived:list", "archived:oci"]  # a Docker manifest list (linux/amd64 cached) and an OCI manifest
    run([MIRROR_CLI, "prefetch", "--url", e2e_mirror.url, *names])
    e2e_mirror.wait_idle()
    exported = tmp_path / "exported.tar"
    config = str(e2e_mirror.root / "config.toml")
    run([MIRROR_CLI, "export", *names, "--format", "docker", "-o", str(exported), "--config", config])

    engine = docker_client.engine
    engine.docker("load", "-i", str(exported))
    try:
        for name, kind in zip(names, ["list", "oci"], strict=True):
            info = json.loads(engine.docker("image", "inspect", name).stdout)[0]
            assert info["RepoTags"] == [name]
            assert len(info["RootFS"]["Layers"]) == len(json.loads(amd64(images[kind]).manifest)["layers"]) == 2
            assert info["Id"] == config_digest(images[kind])
            assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
        saved = tmp_path / "saved.tar"
        engine.docker("save", "-o", str(saved), *names)
    finally:
        engine.docker("rmi", *names, check=False)

    offline = MirrorProcess(tmp_path / "offline", {"docker.io": "http://127.0.0.1:9"})  # nothing listens there
    offline.write_config()
    result = run([MIRROR_CLI, "import", str(saved), "--config", str(offline.root / "config.toml")])
    assert "docker.io/library/archived:list sha256:" in result.stdout
    assert "docker.io/library/archived:oci sha256:" in result.stdout
    assert "synthesized" in result.stderr
    offline.start()
    try:
        for name, kind in zip(names, ["list", "oci"], strict=True):
            # Docker treats 127.0.0.0/8 registries as insecure: plain HTTP, pulled by name.
            reference = f"127.0.0.1:{offline.port}/library/{name}"
            engine.docker("pull", reference)
            try:
                image_id = engine.docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()
                assert image_id == config_digest(images[kind])
            finally:
                engine.docker("rmi", reference, check=False)
        assert offline.stats()["blob_misses"] == 0
    finally:
        offline.stop()
