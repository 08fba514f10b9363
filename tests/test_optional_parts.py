"""Optional parts are loaded only when configured: a mirror without [fleet] never imports redis
(about 8 MiB of resident memory on its own, measured with Debian's Python 3.11), and one without
[signatures] never imports cryptography."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BUILD = """
import sys
from pathlib import Path
from mirror.composition import Mirror
from mirror.config import load
from mirror.http.assembly import assemble
assemble(Mirror(load(Path(sys.argv[1]))))
print(sorted(name for name in sys.modules if name.split(".")[0] in ("redis", "hiredis", "cryptography")))
"""


def loaded(tmp_path: Path, config: str) -> str:
    tmp_path.mkdir(parents=True)
    path = tmp_path / "config.toml"
    path.write_text(f'[cache]\ndirectory = "{tmp_path / "cache"}"\n{config}')
    result = subprocess.run([sys.executable, "-c", BUILD, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_redis_is_imported_only_for_a_fleet(tmp_path: Path) -> None:
    assert loaded(tmp_path / "alone", "") == "[]"
    fleet = '[fleet]\nredis = "redis://127.0.0.1:1/0"\npeer_url = "http://127.0.0.1:2"\n'
    fleet += 'secret = "0123456789abcdef0123"\n'
    assert "'redis'" in loaded(tmp_path / "fleet", fleet)


def test_cryptography_is_imported_only_with_a_signature_policy(tmp_path: Path) -> None:
    assert loaded(tmp_path / "open", "") == "[]"
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    signed = loaded(tmp_path / "signed", f'[signatures]\npolicy = "{policy}"\n')
    assert "'cryptography'" in signed
