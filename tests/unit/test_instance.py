"""The instance directory: made private, found, and cleaned up when its server is gone."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from passenger.admin import instance


def test_an_instance_directory_is_private_and_complete(tmp_path: Path) -> None:
    made = instance.create(tmp_path, {"listen": ["tcp:3000"]})
    try:
        assert instance.NAME.fullmatch(made.name)
        assert stat.S_IMODE(made.path.stat().st_mode) == 0o700
        for name in (instance.READ_ONLY_PASSWORD, instance.FULL_PASSWORD):
            assert stat.S_IMODE((made.path / name).stat().st_mode) == 0o600
        assert made.password(full=True) != made.password(full=False)
        assert len(made.password(full=True) or "") == 24
        properties = json.loads((made.path / instance.PROPERTIES).read_text())
        assert properties["pid"] == os.getpid() and properties["listen"] == ["tcp:3000"]
        assert properties["api_socket"] == str(made.socket_path)
        assert made.alive() and instance.find(tmp_path).name == made.name
    finally:
        instance.remove(made)
    assert not made.path.exists()


def test_a_dead_servers_directory_is_removed(tmp_path: Path) -> None:
    made = instance.create(tmp_path, {})
    assert made.lock_fd is not None
    os.close(made.lock_fd)  # as if the server died: its lock is gone, though its pid (ours) still runs
    assert not instance.read(made.path).alive(), "a reused pid does not keep a dead instance alive"  # type: ignore[union-attr]
    assert instance.remove_stale(tmp_path) == [made.path]
    with pytest.raises(instance.NoInstance):
        instance.find(tmp_path)


def test_a_gone_pid_is_dead(tmp_path: Path) -> None:
    made = instance.create(tmp_path, {})
    try:
        properties = json.loads((made.path / instance.PROPERTIES).read_text())
        properties["pid"] = 2**22 + 12345  # above pid_max's default: no such process
        (made.path / instance.PROPERTIES).write_text(json.dumps(properties))
        assert instance.running(tmp_path) == []
        assert not made.path.exists()
    finally:
        instance.remove(made)


def test_spawn_work_directories_are_never_taken_for_instances(tmp_path: Path) -> None:
    work = tmp_path / "passenger.spawn.abcdefgh"
    (work / "agents.s").mkdir(parents=True)
    old = 1_000_000_000
    os.utime(work, (old, old))
    assert instance.remove_stale(tmp_path) == [] and work.exists()


def test_several_servers_need_a_name(tmp_path: Path) -> None:
    first, second = instance.create(tmp_path, {}), instance.create(tmp_path, {})
    try:
        with pytest.raises(instance.SeveralInstances, match="--instance NAME"):
            instance.find(tmp_path)
        assert instance.find(tmp_path, second.name).name == second.name
        with pytest.raises(instance.NoInstance, match="no passenger instance named 'nope'"):
            instance.find(tmp_path, "nope")
    finally:
        instance.remove(first)
        instance.remove(second)


def test_a_socket_path_too_long_is_recorded(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    made = instance.create(deep, {})
    try:
        assert not made.has_socket
        assert instance.find(deep).has_socket is False
    finally:
        instance.remove(made)
