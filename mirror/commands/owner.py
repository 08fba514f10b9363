"""Commands that write where the service keeps its files make them the service's.

The service runs as its own user (systemd's `DynamicUser=`, `UMask=0077`); operators run
`sudo mirror import|credentials|pin|unpin|rm|gc|verify`. Files root made there would be root's,
mode 0600, and the service could not read them (an imported image answered 500). So a command
run as root takes the directory owner's identity for the files it makes: the file-system user
and group (Linux's fsuid and fsgid), umask 0077, as the service makes files. It keeps root's
right to walk every directory (SECBIT_NO_SETUID_FIXUP keeps the capabilities a change of fsuid
would drop): a `DynamicUser=` state directory lies below /var/lib/private (0700, root's), which
its owner itself could not walk through from outside the service, and SQLite resolves a
database's path from / whatever it is given. The file-system identity is the calling thread's
and is inherited by threads started later, so this runs first, before any thread exists.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_PR_SET_SECUREBITS = 28
_SECBIT_NO_SETUID_FIXUP = 1 << 2


class NotTheOwner(SystemExit):
    """The directory belongs to someone else and this process cannot make files as them."""


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def act_as_owner(directory: Path, command: str) -> None:
    """From now on, files this process makes are owned as `directory` is (as root); elsewhere, check it may write."""
    existing = _nearest_existing(directory)
    owner = existing.stat()
    if os.geteuid() != 0:
        if owner.st_uid != os.geteuid() and not os.access(existing, os.W_OK):
            raise NotTheOwner(
                f"mirror {command}: {existing} belongs to uid {owner.st_uid} (the service's user): run this as "
                f"root (sudo mirror {command} …), which makes its files that user's, or as that user"
            )
        return
    if owner.st_uid == 0:
        return  # root's own files: nothing to become
    import ctypes  # only as root, for the commands that write: not in `mirror serve`

    assert threading.active_count() == 1, "the file-system identity is per thread: set it before any starts"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_SECUREBITS, _SECBIT_NO_SETUID_FIXUP, 0, 0, 0) != 0:
        raise NotTheOwner(
            f"mirror {command}: cannot make files as {existing}'s owner (uid {owner.st_uid}) here: "
            f"{os.strerror(ctypes.get_errno())}; run it as that user"
        )
    libc.setfsgid(owner.st_gid)
    libc.setfsuid(owner.st_uid)
    if libc.setfsuid(-1) != owner.st_uid:  # an invalid id changes nothing and says the current one
        raise NotTheOwner(f"mirror {command}: could not take uid {owner.st_uid} for the files it makes")
    os.umask(0o077)
