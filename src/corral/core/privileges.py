"""Who the workers run as: resolve `user`/`group`, and drop to them in a worker right after fork.

The master keeps its own identity (it may need to bind privileged ports again); workers, which run the
app and face the network, never keep root.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

__all__ = ["Identity", "drop_privileges", "resolve_identity"]


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    user_name: str | None
    supplementary: bool  # also take every group the user belongs to (initgroups)


def resolve_identity(user: int | str | None, group: int | str | None, initgroups: bool) -> Identity | None:
    """The identity workers should take, or None to keep the master's; ValueError names what is missing."""
    if user is None and group is None:
        return None
    uid, gid, name = os.getuid(), os.getgid(), None
    if user is not None:
        entry = _user_entry(user)
        uid, name = entry.pw_uid, entry.pw_name
        gid = entry.pw_gid  # the user's primary group, unless `group` says otherwise
    if group is not None:
        gid = _group_id(group)
    return Identity(uid, gid, name, initgroups and name is not None)


def _user_entry(user: int | str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"no such user {user!r}") from None


def _group_id(group: int | str) -> int:
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no such group {group!r}") from None


def drop_privileges(identity: Identity) -> None:
    """Become `identity` for good: groups first, then gid, then uid (after setuid nothing else is allowed)."""
    if os.getuid() == identity.uid and os.getgid() == identity.gid:
        return
    if identity.supplementary and identity.user_name is not None:
        os.initgroups(identity.user_name, identity.gid)
    elif os.getuid() == 0:
        os.setgroups([])
    os.setgid(identity.gid)
    os.setuid(identity.uid)
