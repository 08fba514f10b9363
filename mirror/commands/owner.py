"""Commands that write where the service keeps its files act as the owner of those files.

The service runs as its own user (systemd's `DynamicUser=`, `UMask=0077`); operators run
`sudo mirror import|credentials|pin|unpin|rm|gc|verify`. Files root made there would be root's,
mode 0600, and the service could not read them (an imported image answered 500). So a command
run as root enters the directory, then becomes its owner (user, group, umask 0077, as the
service makes files) for the rest of its run: everything it creates is the service's, whether
the service is running or not. It enters first because a `DynamicUser=` state directory lies
below /var/lib/private (mode 0700, root's), which its owner cannot walk through.
"""

from __future__ import annotations

import os
from pathlib import Path


class NotTheOwner(SystemExit):
    """The directory belongs to someone else and this process cannot act as them."""


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def act_as_owner(directory: Path, command: str) -> Path:
    """`directory` as this process should name it from now on; as root, this process now acts as its owner.

    Only once per process (the switch cannot be undone): callers pass the one directory they write in.
    """
    existing = _nearest_existing(directory)
    owner = existing.stat()
    if os.geteuid() != 0:
        if owner.st_uid != os.geteuid() and not os.access(existing, os.W_OK):
            raise NotTheOwner(
                f"mirror {command}: {existing} belongs to uid {owner.st_uid} (the service's user): run this as "
                f"root (sudo mirror {command} …), which acts as that user, or as that user"
            )
        return directory
    if owner.st_uid == 0:
        return directory  # root's own files: nothing to become
    os.chdir(existing)  # while root: the way in stays open after the switch
    os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)
    os.umask(0o077)
    return Path(".") / directory.absolute().relative_to(existing)
