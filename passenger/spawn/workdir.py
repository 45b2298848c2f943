"""The work directory of one spawn, as Passenger's SpawningKit lays it out (passenger-gls.md §1.3).

The server writes the arguments and the environment dump; the app may write
``response/finish``, ``response/properties.json``, ``response/error/*`` and
``response/steps/*``.  Everything the app wrote is read back with a size cap,
through directory descriptors and ``O_NOFOLLOW``, so a link planted by the app
cannot make the server read (or show) another file.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import stat
import tempfile
from collections.abc import Mapping
from typing import Any

#: Size caps of what the app writes (Passenger's Constants.h).
PROPERTIES_CAP = 32 * 1024
SMALL_CAP = 32
TEXT_CAP = 128 * 1024

#: The files of response/error/ that Passenger reads.
ERROR_FILES = (
    "category",
    "summary",
    "problem_description.html",
    "problem_description.txt",
    "advanced_problem_details",
    "solution_description.html",
    "solution_description.txt",
)

#: Steps the app's side may record (lower-case directory names).
SUBPROCESS_STEPS = (
    "subprocess_before_first_exec",
    "subprocess_spawn_env_setupper_before_shell",
    "subprocess_os_shell",
    "subprocess_spawn_env_setupper_after_shell",
    "subprocess_exec_wrapper",
    "subprocess_wrapper_preparation",
    "subprocess_app_load_or_exec",
    "subprocess_listen",
    "subprocess_finish",
)

_ULIMITS = (
    ("core file size (blocks)", "RLIMIT_CORE"),
    ("data seg size (kbytes)", "RLIMIT_DATA"),
    ("file size (blocks)", "RLIMIT_FSIZE"),
    ("max locked memory (kbytes)", "RLIMIT_MEMLOCK"),
    ("open files", "RLIMIT_NOFILE"),
    ("stack size (kbytes)", "RLIMIT_STACK"),
    ("cpu time (seconds)", "RLIMIT_CPU"),
    ("max user processes", "RLIMIT_NPROC"),
    ("virtual memory (kbytes)", "RLIMIT_AS"),
)


class WorkDirError(OSError):
    """The work directory could not be made or was tampered with."""


def _write_new(dir_fd: int, name: str, data: bytes) -> None:
    """Create ``name`` (mode 0600); an existing file is a bug or an attack, never overwritten."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _mkdir(dir_fd: int, name: str) -> int:
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def ulimits_text() -> str:
    """What ``ulimit -a`` says, for the report, without running a shell."""
    lines = []
    for label, name in _ULIMITS:
        limit = getattr(resource, name, None)
        if limit is None:
            continue
        soft, _ = resource.getrlimit(limit)
        value = "unlimited" if soft == resource.RLIM_INFINITY else str(soft // 1024 if "kbytes" in label else soft)
        lines.append(f"{label:<32} {value}")
    return "\n".join(lines) + "\n"


def user_info_text(uid: int | None = None, gid: int | None = None) -> str:
    """What ``id`` says for the user the app runs as."""
    import grp
    import pwd

    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid

    def user(u: int) -> str:
        try:
            return f"{u}({pwd.getpwuid(u).pw_name})"
        except KeyError:
            return str(u)

    def group(g: int) -> str:
        try:
            return f"{g}({grp.getgrgid(g).gr_name})"
        except KeyError:
            return str(g)

    groups = os.getgroups() if uid == os.getuid() else [gid]
    return f"uid={user(uid)} gid={group(gid)} groups={','.join(group(g) for g in groups)}\n"


class WorkDir:
    """``<spawn_dir>/passenger.spawn.XXXXXXXXXX`` and what lives in it."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, spawn_dir: str) -> WorkDir:
        """A fresh directory (mode 0700, random name, never an existing path)."""
        try:
            return cls(tempfile.mkdtemp(prefix="passenger.spawn.", dir=spawn_dir))
        except OSError as e:
            raise WorkDirError(e.errno, f"cannot create a spawn work directory in {spawn_dir}: {e.strerror}") from None

    @property
    def finish_fifo(self) -> str:
        return os.path.join(self.path, "response", "finish")

    def prepare(self, args: Mapping[str, Any], env: Mapping[str, str], user_info: str) -> None:
        """Write args.json, args/, response/ (with the finish FIFO) and envdump/."""
        root = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _write_new(root, "args.json", json.dumps(dict(args), indent=2, sort_keys=True).encode())
            args_fd = _mkdir(root, "args")
            try:
                for key, value in args.items():
                    if isinstance(value, (dict, list)):
                        _write_new(args_fd, key + ".json", json.dumps(value).encode())
                    elif isinstance(value, bool):
                        _write_new(args_fd, key, b"true" if value else b"false")
                    else:
                        _write_new(args_fd, key, b"" if value is None else str(value).encode())
            finally:
                os.close(args_fd)
            response = _mkdir(root, "response")
            try:
                os.mkfifo("finish", 0o600, dir_fd=response)
                for name in ("error", "steps"):
                    os.close(_mkdir(response, name))
                steps = os.open("steps", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=response)
                try:
                    for step in SUBPROCESS_STEPS:
                        step_fd = _mkdir(steps, step)
                        try:
                            _write_new(step_fd, "state", b"STEP_NOT_STARTED")
                        finally:
                            os.close(step_fd)
                finally:
                    os.close(steps)
            finally:
                os.close(response)
            envdump = _mkdir(root, "envdump")
            try:
                envvars = "".join(f"{k}={v}\n" for k, v in sorted(env.items()))
                _write_new(envdump, "envvars", envvars.encode("utf-8", "replace"))
                _write_new(envdump, "user_info", user_info.encode())
                _write_new(envdump, "ulimits", ulimits_text().encode())
                os.close(_mkdir(envdump, "annotations"))
            finally:
                os.close(envdump)
        finally:
            os.close(root)

    def chown(self, uid: int, gid: int) -> None:
        """Hand the directory to the app's user, once the server is done writing it."""
        for dirpath, dirnames, filenames in os.walk(self.path):
            os.chown(dirpath, uid, gid, follow_symlinks=False)
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)

    # Reading what the app wrote.
    def read(self, relative: str, cap: int) -> bytes | None:
        """The file's first ``cap`` bytes; None if absent, not a regular file, or behind a link."""
        parts = relative.split("/")
        fds: list[int] = []
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            fds.append(fd)
            for part in parts[:-1]:
                fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                fds.append(fd)
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
            fds.append(fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, cap)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES, errno.EISDIR):
                return None
            raise
        finally:
            for fd in reversed(fds):
                os.close(fd)

    def read_text(self, relative: str, cap: int = TEXT_CAP) -> str | None:
        data = self.read(relative, cap)
        return None if data is None else data.decode("utf-8", "replace")

    def mtime(self, relative: str) -> float | None:
        try:
            return os.stat(os.path.join(self.path, relative), follow_symlinks=False).st_mtime
        except OSError:
            return None

    def app_error(self) -> dict[str, str]:
        """The app's own error report from response/error/, whatever it wrote of it."""
        found = {}
        for name in ERROR_FILES:
            text = self.read_text("response/error/" + name, SMALL_CAP if name == "category" else TEXT_CAP)
            if text is not None and text.strip():
                found[name] = text.strip() if name in ("category", "summary") else text
        return found

    def annotations(self) -> dict[str, str]:
        try:
            names = sorted(os.listdir(os.path.join(self.path, "envdump", "annotations")))[:50]
        except OSError:
            return {}
        found = {}
        for name in names:
            text = self.read_text("envdump/annotations/" + name)
            if text is not None:
                found[name] = text
        return found

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
