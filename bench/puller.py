"""The bench's clients: pull an image (manifest → config → layers), or one blob.

Every blob is hashed as it arrives and checked against its digest and size; bytes are
discarded. Jobs run in-process (`run_job`) or spread over worker processes
(`run_parallel`, which starts `python -m bench.puller` workers that wait for a common
start signal, so 32 clients are not bottlenecked on one interpreter).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.http import Client

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
LAYER_CONCURRENCY = 3  # as Docker's max-concurrent-downloads


async def pull_image(base_url: str, job: dict[str, Any]) -> dict[str, Any]:
    """One client pulling one image; returns timings, byte counts and any errors."""
    repo, tag = job["repository"], job["tag"]
    client = Client(base_url, timeout=job.get("timeout", 600.0))
    result: dict[str, Any] = {"ok": False, "repository": repo, "bytes": 0, "blobs": 0, "errors": []}
    start = time.monotonic()
    result["start"] = start
    try:
        manifest = await client.request("GET", f"/v2/{repo}/manifests/{tag}", {"Accept": MANIFEST_ACCEPT})
        if manifest.status != 200:
            raise RuntimeError(f"manifest {repo}:{tag}: HTTP {manifest.status} {manifest.body[:200]!r}")
        digest = "sha256:" + hashlib.sha256(manifest.body).hexdigest()
        expected = job.get("manifest_digest")
        if expected and digest != expected:
            raise RuntimeError(f"manifest digest mismatch: got {digest}, want {expected}")
        header = manifest.headers.get("docker-content-digest")
        if header and header != digest:
            raise RuntimeError(f"Docker-Content-Digest {header} does not match the body {digest}")
        result["manifest_at"] = time.monotonic()  # when the target answered: it took the connection
        result["bytes"] += manifest.size
        document = json.loads(manifest.body)
        if "layers" not in document:
            raise RuntimeError(f"not a single-platform image manifest: {document.get('mediaType')}")
        descriptors = [document["config"], *document["layers"]]
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for descriptor in descriptors:
            queue.put_nowait(descriptor)

        async def worker() -> None:
            while not queue.empty():
                descriptor = queue.get_nowait()
                got = await fetch_blob(client, repo, descriptor["digest"], descriptor["size"], verify=True)
                result["bytes"] += got["bytes"]
                result["blobs"] += 1

        await asyncio.gather(*(worker() for _ in range(LAYER_CONCURRENCY)))
        result["ok"] = True
    except Exception as exc:
        result["errors"].append(f"{type(exc).__name__}: {exc}")
    finally:
        client.close()
    result["end"] = time.monotonic()
    result["seconds"] = result["end"] - start
    return result


async def fetch_blob(
    client: Client, repo: str, digest: str, size: int | None, *, verify: bool = True
) -> dict[str, Any]:
    response = await client.request("GET", f"/v2/{repo}/blobs/{digest}", keep_body=False, hash_body=verify)
    if response.status != 200:
        raise RuntimeError(f"blob {digest[:19]}: HTTP {response.status}")
    if size is not None and response.size != size:
        raise RuntimeError(f"blob {digest[:19]}: got {response.size} bytes, want {size}")
    if verify and response.sha256 != digest:
        raise RuntimeError(f"blob digest mismatch: got {response.sha256}, want {digest}")
    first = response.t_first_byte if response.t_first_byte is not None else response.t_end
    return {
        "bytes": response.size,
        "seconds": response.t_end - response.t_start,
        "ttfb": first - response.t_start,
        "ttfh": response.t_headers - response.t_start,
        "start": response.t_start,
        "end": response.t_end,
        "cache": response.headers.get("x-cache"),
    }


async def pull_blob(base_url: str, job: dict[str, Any]) -> dict[str, Any]:
    client = Client(base_url, timeout=job.get("timeout", 600.0))
    start = time.monotonic()
    try:
        verify = job.get("verify", True)
        got = await fetch_blob(client, job["repository"], job["digest"], job.get("size"), verify=verify)
        return {"ok": True, "errors": [], **got}
    except Exception as exc:
        return {
            "ok": False,
            "errors": [f"{type(exc).__name__}: {exc}"],
            "bytes": 0,
            "start": start,
            "end": time.monotonic(),
        }
    finally:
        client.close()


async def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Run `job["clients"]` clients of `job["kind"]` concurrently in this process."""
    kind = job["kind"]
    clients = job.get("clients", 1)
    # Clients spread over several servers (a fleet's replicas, as DNS round robin spreads them)
    bases = job.get("base_urls") or [job["base_url"]]
    first = job.get("first", 0)  # this process's first client, counted over all processes
    urls = [bases[(first + n) % len(bases)] for n in range(clients)]
    if kind == "image":
        # Clients spread over several images (a crowd), in turn as over the servers
        images = job.get("images") or [{}]
        jobs = [{**job, **images[(first + n) % len(images)]} for n in range(clients)]
        return list(await asyncio.gather(*(pull_image(url, one) for url, one in zip(urls, jobs, strict=True))))
    if kind == "blob":
        return list(await asyncio.gather(*(pull_blob(url, job) for url in urls)))
    raise ValueError(f"unknown job kind {kind}")


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_parallel(job: dict[str, Any], workers: int, timeout: float) -> list[dict[str, Any]]:
    """Spread a job's clients over worker processes started together."""
    workers = max(1, min(workers, job.get("clients", 1)))
    counts = split(job.get("clients", 1), workers)
    shares = [{**job, "clients": n, "first": sum(counts[:i])} for i, n in enumerate(counts)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for share in shares:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.puller"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
            assert process.stdin is not None
            process.stdin.write((json.dumps(share) + "\n").encode())
            process.stdin.flush()
            processes.append(process)
        for process in processes:  # every worker is ready before any starts
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"puller worker did not start: {line[:200]!r}")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.flush()
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        for process in processes:
            out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.extend(json.loads(out))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def worker_main() -> int:
    job = json.loads(sys.stdin.readline())
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    results = asyncio.run(run_job(job))
    sys.stdout.write(json.dumps(results))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
