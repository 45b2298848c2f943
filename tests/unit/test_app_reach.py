"""Can the account an app runs as get to its root? (``passenger.spawn.users.unreachable``)"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger

from passenger.config import AppConfig
from passenger.spawn.spawner import Spawner
from passenger.spawn.users import AppUser, unreachable

ME = os.getuid()
MY_GROUP = os.getgid()
#: An account that is not the owner of anything made here, in no group of ours.
STRANGER = AppUser(uid=ME + 40000, gid=MY_GROUP + 40000, name="stranger", home="/", shell="/bin/sh")


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory anyone may enter, outside pytest's private tmp_path (0700)."""
    path = Path(tempfile.mkdtemp(prefix="passenger-reach-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def app_root(base: Path, parent_mode: int) -> Path:
    parent = base / "home"
    root = parent / "app"
    root.mkdir(parents=True)
    os.chmod(parent, parent_mode)
    return root


def test_a_directory_on_the_way_that_others_may_not_enter_is_named(base: Path) -> None:
    root = app_root(base, 0o700)
    why = unreachable(STRANGER, str(root), groups=[STRANGER.gid])
    assert why is not None and why.startswith(f"{base / 'home'} is mode 0700, owned by ")


def test_mode_bits_that_let_others_through_pass(base: Path) -> None:
    root = app_root(base, 0o711)
    assert unreachable(STRANGER, str(root), groups=[STRANGER.gid]) is None


def test_the_owner_and_the_group_are_judged_by_their_own_bits(base: Path) -> None:
    root = app_root(base, 0o710)  # the owner and the group may enter; others may not
    owner = AppUser(uid=ME, gid=STRANGER.gid, name="owner", home="/", shell="/bin/sh")
    assert unreachable(owner, str(root), groups=[STRANGER.gid]) is None
    assert unreachable(STRANGER, str(root), groups=[MY_GROUP]) is None, "in the directory's group"
    assert unreachable(STRANGER, str(root), groups=[STRANGER.gid]) is not None
    os.chmod(base / "home", 0o071)  # others' and the group's bits do not help the owner
    assert unreachable(owner, str(root), groups=[STRANGER.gid]) is not None


def test_a_symlink_is_judged_by_where_it_leads(base: Path) -> None:
    root = app_root(base, 0o700)
    link = base / "link"
    link.symlink_to(root)
    assert unreachable(STRANGER, str(link), groups=[STRANGER.gid]) is not None


def test_a_directory_with_an_acl_is_left_to_the_kernel(base: Path) -> None:
    root = app_root(base, 0o700)
    # POSIX ACL, version 2: owner rwx, the stranger --x (the mask lets it), group and others nothing.
    entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 1, STRANGER.uid), (0x04, 0, 0xFFFFFFFF), (0x10, 1, 0xFFFFFFFF),
               (0x20, 0, 0xFFFFFFFF)]
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    os.setxattr(base / "home", "system.posix_acl_access", acl)
    assert unreachable(STRANGER, str(root), groups=[STRANGER.gid]) is None


def test_a_missing_directory_is_left_to_the_spawn(base: Path) -> None:
    assert unreachable(STRANGER, str(base / "nowhere" / "app"), groups=[STRANGER.gid]) is None


def test_the_spawner_warns_once_per_root_and_account(base: Path) -> None:
    root = app_root(base, 0o700)
    events: list[dict[str, Any]] = []
    spawner = Spawner(MemoryReactorClock())
    spawner.log = Logger(observer=events.append)
    app = AppConfig(name="hello", root=str(root), start_command="true")
    user = AppUser(uid=STRANGER.uid, gid=STRANGER.gid, name="nobody-like", home="/", shell="/bin/sh")
    spawner._check_reach(app, user)
    spawner._check_reach(app, user)
    assert len(events) == 1
    text = events[0]["log_format"].format(**events[0])
    assert text.startswith(f"Processes of hello run as nobody-like, who cannot reach {root}: {base / 'home'} is "
                           "mode 0700"), text
    assert "chown the app root" in text
