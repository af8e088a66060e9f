"""This user's private agentmesh folder, for what must not sit in the shared temp folder (child-mode rosters).

It is ``$XDG_CACHE_HOME/agentmesh``, else ``~/.cache/agentmesh``: one place
for every session of the user (an ssh login, cron, a service), made 0700 on
first use. A folder there that is a link, is not the user's, or that group
or others may enter is refused, never used nor repaired.
"""
from __future__ import annotations

import logging
import os
import stat

log = logging.getLogger("agentmesh")

NAME = "agentmesh"


def user_dir() -> str:
    """The path of this user's private folder (made now, 0700, if missing); PermissionError if it is unsafe."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(cache):
        raise PermissionError(f"agentmesh: no home folder to keep a private folder in (the cache folder "
                              f"{cache!r} is not absolute); set HOME or XDG_CACHE_HOME")
    path = os.path.join(cache, NAME)
    os.makedirs(cache, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)        # whatever the umask
        log.debug("agentmesh: made the private folder %s", path)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"agentmesh: {path} is not a folder (a link or a file); remove it, agentmesh "
                              f"makes it again as a private folder")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise PermissionError(f"agentmesh: {path} is not owned by this user (uid {info.st_uid}, this process "
                              f"runs as {os.getuid()}); remove it, agentmesh makes it again")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise PermissionError(f"agentmesh: {path} may be entered by group or others (mode "
                              f"{stat.S_IMODE(info.st_mode):03o}); run chmod 700 {path}")
    return path
