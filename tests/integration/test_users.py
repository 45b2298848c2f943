"""User switching: a server running as root never runs an app as root (passenger-gls.md §5)."""

from __future__ import annotations

import grp
import itertools
import json
import os
import pwd
import re
import shutil
import subprocess
import urllib.request

import pytest

from tests.integration.conftest import APP_PYTHON, APPS, TWISTD, world_dir
from tests.polling import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="user switching happens only when the server runs as root")


def _seen_by_app(server) -> dict:  # type: ignore[no-untyped-def]
    with urllib.request.urlopen(server.url + "/echo", timeout=10) as response:
        return json.loads(response.read())


def _app_owned_by(user: str) -> str:
    root = world_dir("owned", 0o755)
    shutil.copy(APPS / "echo_app.py", root / "echo_app.py")
    account = pwd.getpwnam(user)
    os.chown(root, account.pw_uid, account.pw_gid)
    return str(root)


def test_root_owned_app_runs_as_nobody(serve) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} echo_app.py"])
    seen = _seen_by_app(server)
    nobody = pwd.getpwnam("nobody")
    assert (seen["uid"], seen["gid"]) == (nobody.pw_uid, nobody.pw_gid)
    assert seen["env"]["USER"] == seen["env"]["LOGNAME"] == "nobody"
    assert seen["env"]["HOME"] == nobody.pw_dir
    assert re.search(r"Spawning process \d+ of \S+ on port \d+ as nobody\n", server.log()), "the log says who"


def test_app_runs_as_the_owner_of_its_root_with_its_groups(serve) -> None:
    root = _app_owned_by("daemon")
    server = serve(["--app-root", root, "--app-start-command", f"{APP_PYTHON} echo_app.py"])
    seen = _seen_by_app(server)
    daemon = pwd.getpwnam("daemon")
    assert (seen["uid"], seen["gid"]) == (daemon.pw_uid, daemon.pw_gid)
    assert seen["groups"] == sorted(os.getgrouplist("daemon", daemon.pw_gid))  # initgroups, not root's groups
    assert 0 not in seen["groups"]
    assert seen["env"]["HOME"] == daemon.pw_dir and seen["env"]["SHELL"] == daemon.pw_shell
    assert re.search(r"Spawning process \d+ of \S+ on port \d+ as daemon\n", server.log())


def test_an_app_root_its_account_cannot_reach_is_named_once_in_the_log(serve) -> None:
    home = world_dir("home", 0o755)
    root = home / "app"
    root.mkdir()
    shutil.copy(APPS / "echo_app.py", root / "echo_app.py")
    os.chmod(home, 0o700)  # as /root is: nobody may not enter
    server = serve(["--app-root", str(root), "--app-start-command", f"{APP_PYTHON} echo_app.py"], ready=0)
    server.wait_log(r"Spawning process \d+ of app on port \d+ as nobody", count=2)
    warnings = re.findall(r"Processes of app run as nobody, who cannot reach (\S+): (\S+) is mode 0700, owned by root",
                          server.log())
    assert warnings == [(str(root), str(home))], server.log()


def test_user_and_group_options(serve) -> None:
    server = serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} echo_app.py",
                    "--user", "daemon", "--group", "nogroup"])
    seen = _seen_by_app(server)
    assert seen["uid"] == pwd.getpwnam("daemon").pw_uid
    assert seen["gid"] == grp.getgrnam("nogroup").gr_gid


def test_root_is_refused_and_unknown_users_are_config_errors() -> None:
    for args, message in ((["--user", "root"], "never run as root"),
                          (["--user", "no-such-user-here"], "no such user"),
                          (["--user", "daemon", "--group", "no-such-group-here"], "no such group")):
        result = subprocess.run([TWISTD, "-n", "--pidfile", "", "passenger", "--app-root", str(APPS),
                                 "--app-start-command", "true", "--port", "0", *args],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode != 0, result
        assert message in result.stderr + result.stdout, result


_accounts = itertools.count()


@pytest.fixture
def shell_account():  # type: ignore[no-untyped-def]
    """A throwaway account whose login shell is bash and whose ~/.profile exports a variable.

    Requested before ``serve`` so that the server (and the app processes of
    this account) stop before the account is removed.
    """
    if shutil.which("useradd") is None or not os.access("/bin/bash", os.X_OK):
        pytest.skip("needs useradd and /bin/bash to make an account with a login shell")
    name = f"psgr{os.getpid() % 100000}x{next(_accounts)}"
    home = world_dir("home", 0o755) / name
    subprocess.run(["useradd", "--home-dir", str(home), "--create-home", "--shell", "/bin/bash",
                    "--user-group", name], check=True, capture_output=True)
    try:
        profile = home / ".profile"
        profile.write_text("export PASSENGER_FROM_PROFILE=profile-was-read\n")
        account = pwd.getpwnam(name)
        os.chown(profile, account.pw_uid, account.pw_gid)
        yield name
    finally:
        # The server is gone (``serve`` stops first), but its killed app processes
        # may still be exiting; userdel refuses while the account has processes.
        def removed() -> bool:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            return subprocess.run(["userdel", "--remove", name], capture_output=True).returncode in (0, 6)

        wait_for(removed, timeout=10, what=f"userdel {name}")


def test_load_shell_envvars_starts_the_app_through_the_login_shell(shell_account: str, serve) -> None:
    base = ["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} echo_app.py", "--user", shell_account]
    with_shell = _seen_by_app(serve([*base, "--load-shell-envvars"]))
    assert with_shell["env"].get("PASSENGER_FROM_PROFILE") == "profile-was-read"
    assert with_shell["env"]["SHELL"] == "/bin/bash"
    assert with_shell["uid"] == pwd.getpwnam(shell_account).pw_uid


def test_without_load_shell_envvars_the_profile_is_not_read(shell_account: str, serve) -> None:
    seen = _seen_by_app(serve(["--app-root", str(APPS), "--app-start-command", f"{APP_PYTHON} echo_app.py",
                               "--user", shell_account]))
    assert "PASSENGER_FROM_PROFILE" not in seen["env"]
