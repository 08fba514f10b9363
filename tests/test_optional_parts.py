"""Optional parts are loaded only when configured: a mirror without [fleet] never imports redis
(about 8 MiB of resident memory on its own, measured with Debian's Python 3.11), one without
[signatures] never imports cryptography nor the policy's code, one without htpasswd users never
loads bcrypt; and `mirror serve` loads none of the other commands' own parts (tarfile, ctypes),
nor uvicorn's and httpx's command lines (click, multiprocessing, pygments: 1.5 to 2.4 MiB)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = """
import sys
from pathlib import Path
from mirror.composition import Mirror
from mirror.config import load
from mirror.http.assembly import assemble
import mirror.commands.main  # every command's parser, as `mirror serve` registers them
assemble(Mirror(load(Path(sys.argv[1]))))
OPTIONAL = ("redis", "hiredis", "cryptography", "bcrypt", "tarfile", "ctypes", "difflib", "mirror.signatures")
print(sorted(name for name in sys.modules if name.startswith(OPTIONAL)))
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


def test_bcrypt_is_imported_only_with_htpasswd_users(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:$2b$05$abcdefghijklmnopqrstuu5FJ3E5x9nMJrIu8.VO0D.BkFZuQqvGe\n")
    assert "'bcrypt'" in loaded(tmp_path / "users", f'[auth]\nhtpasswd = "{htpasswd}"\n')


def test_the_tls_trust_store_is_loaded_at_the_first_connection(tmp_path: Path) -> None:
    """The system store is ~1.2 MiB once parsed: an upstream never dialled never loads it; a
    `ca_file` is read at once, so a bad one stops the start-up."""
    from mirror.upstream.trust import Trust

    lazy = Trust(None, None, None)
    assert lazy._context is None
    assert lazy.context() is lazy.context()
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError):
        Trust(bad, None, None)


SERVE_PARSER = """
import sys
from mirror.commands.main import build_parser
args = build_parser(sys.argv[1:]).parse_args(sys.argv[1:])
print(args.command, sorted(n for n in sys.modules if n.startswith("mirror.commands.") and "configfile" not in n
      and "owner" not in n and not n.endswith(".main")))
"""


def test_the_server_loads_no_other_commands_code() -> None:
    def parsed(*argv: str) -> str:
        result = subprocess.run([sys.executable, "-c", SERVE_PARSER, *argv], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert parsed("--config", "/x.toml", "serve") == "serve ['mirror.commands.serve']"
    assert parsed("serve", "--offline") == "serve ['mirror.commands.serve']"
    # A config file named like a command is no command: every parser, then `ls`.
    listed = parsed("--config", "serve", "ls")
    assert listed.startswith("ls ") and "mirror.commands.archive" in listed


SERVER_LIBRARIES = """
import sys
from pathlib import Path
if sys.argv[2] == "fallback":  # a uvicorn whose init asks its command line for more than the server
    import mirror.http.lean
    def refuse(name):
        raise AttributeError(name)
    mirror.http.lean._server_class = refuse
from mirror.commands.main import build_parser
build_parser(["serve"])
from mirror.composition import Mirror
from mirror.config import load
from mirror.http.assembly import assemble
import uvicorn, uvicorn.server, httpx
assembly = assemble(Mirror(load(Path(sys.argv[1]))))
assembly.server(None)
loaded = sorted(n for n in sys.modules if n.split(".")[0] in ("click", "pygments", "rich", "multiprocessing"))
assert uvicorn.Server is uvicorn.server.Server and uvicorn.Config.__module__ == "uvicorn.config"
print(sorted({n.split(".")[0] for n in loaded}), httpx.Client.__module__)
import uvicorn.main  # asked for afterwards: the real command line
print(type(sys.modules["uvicorn.main"].main).__name__)
"""


@pytest.mark.parametrize("case", ["lean", "fallback"])
def test_the_server_imports_its_libraries_without_their_command_lines(tmp_path: Path, case: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[cache]\ndirectory = "{tmp_path / "cache"}"\n')
    result = subprocess.run(
        [sys.executable, "-c", SERVER_LIBRARIES, str(path), case], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    libraries, command = result.stdout.split("\n")[:2]
    if case == "lean":
        assert libraries == "[] httpx", "click, multiprocessing, pygments: none loaded by the server"
    else:
        assert libraries.startswith("['click'") and libraries.endswith("httpx"), "imported whole, and working"
    assert command == "Command", "uvicorn's own command line, when something asks for it"
