"""The admin dashboard in a real browser: headless Chromium driven by Selenium.

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs
them).  Without them the tests skip, unless PASSENGER_REQUIRE_CHROMIUM is set
(as in CI), where they fail.  The browser signs in with basic auth through a
header set over the DevTools protocol, which covers the page and its fetch()
calls alike.  The first test saves a screenshot, to docs/images/dashboard.png with
PASSENGER_UPDATE_SCREENSHOT=1.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from passenger.admin import instance
from tests.integration.conftest import APP_PYTHON, APPS, RawRequest, Server, echo_app_args, free_port, world_dir
from tests.polling import wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,800")
#: The picture docs/admin.md shows; the test refreshes it only when asked (it changes with every run).
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"
#: Seconds to wait for the page to show something (it polls every second).
PATIENCE = 20


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        reason = f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("PASSENGER_REQUIRE_CHROMIUM"):
            pytest.fail(f"{reason}, and PASSENGER_REQUIRE_CHROMIUM is set")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        yield driver
    finally:
        driver.quit()


class Admin:
    """A server's --admin-listen endpoint and its passwords (from the instance directory)."""

    def __init__(self, server: Server, port: int, registry: Path) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{port}/"
        found = wait_for(lambda: self._instance(registry), PATIENCE, what="the instance directory")
        self.full = found.password(full=True)
        self.read_only = found.password(full=False)
        wait_for(lambda: self.status("ping.json") == 401, PATIENCE, what="the admin listener")

    def _instance(self, registry: Path) -> instance.Instance | None:
        if self.server.proc is not None and self.server.proc.poll() is not None:
            raise AssertionError(f"server exited:\n{self.server.output()}{self.server.log()}")
        running = instance.running(registry)
        return running[0] if running else None

    @staticmethod
    def authorization(user: str, password: str | None) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def open(self, path: str, signed_in: bool = False) -> Any:
        request = urllib.request.Request(self.url + path)
        if signed_in:
            request.add_header("Authorization", self.authorization("admin", self.full))
        return urllib.request.urlopen(request, timeout=10)

    def status(self, path: str) -> int | None:
        try:
            with self.open(path):
                return 200
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None  # not listening yet

    def get_json(self, path: str) -> Any:
        with self.open(path, signed_in=True) as response:
            return json.load(response)

    def sign_in(self, driver: webdriver.Chrome, user: str, password: str | None) -> None:
        """Send basic auth with every request the browser makes from now on (page and fetch alike)."""
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                               {"headers": {"Authorization": self.authorization(user, password)}})


def start(serve: Callable[..., Server], *args: str) -> Admin:
    port, registry = free_port(), world_dir("registry", 0o755)
    server = serve([*args, "--admin-listen", f"tcp:{port}:interface=127.0.0.1",
                    "--instance-registry-dir", str(registry)], ready=0)
    return Admin(server, port, registry)


def until(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any], what: str) -> Any:
    """Poll the page until ``condition`` is truthy (elements replaced under us count as not yet)."""
    return WebDriverWait(driver, PATIENCE, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        condition, f"the dashboard never showed {what}")


def row(driver: webdriver.Chrome, app: str, pid: int) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, f'section[data-app="{app}"] tr[data-pid="{pid}"]')


def number(element: WebElement, attribute: str) -> int:
    return int(element.get_attribute(attribute) or 0)


def request_pid(server: Server) -> int:
    with urllib.request.urlopen(server.url + "/pid", timeout=20) as response:
        return int(response.read())


def traffic(server: Server, seconds: float) -> None:
    """Requests for the chart, a few seconds of them, thinning out: worker k stops after (k + 1) / 4 of the time."""
    deadline = time.monotonic() + seconds

    def worker(k: int) -> None:
        stop = deadline - seconds * (3 - k) / 4
        for _ in range(2000):  # bounded, whatever the clock does
            if time.monotonic() >= stop:
                return
            with urllib.request.urlopen(f"{server.url}/sleep?ms={40 + 25 * k}", timeout=20) as response:
                response.read()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
        assert not thread.is_alive(), "a traffic thread did not finish"


def test_dashboard_shows_processes_and_acts_on_them(serve: Callable[..., Server], browser: webdriver.Chrome,
                                                    tmp_path: Path) -> None:
    admin = start(serve, *echo_app_args("--min-instances", "0"))
    server = admin.server

    # Nobody signed in: a 401 and its challenge, to the browser as to anyone.
    try:
        admin.open("")
        raise AssertionError("the dashboard answered without credentials")
    except urllib.error.HTTPError as e:
        assert e.code == 401 and e.headers["WWW-Authenticate"].startswith("Basic ")
    browser.get(admin.url)
    status = browser.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")
    assert status == 401  # (Chromium asks for a password and shows nothing of the page)
    assert browser.find_elements(By.ID, "apps") == []

    admin.sign_in(browser, "admin", admin.full)
    browser.get(admin.url)
    [app] = [group["name"] for group in admin.get_json("pool.json")["groups"]]
    section = until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'section[data-app="{app}"]'), "the app")
    until(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ok", "an update")
    assert section.find_elements(By.CSS_SELECTOR, "tr[data-pid]") == []
    assert section.find_element(By.CSS_SELECTOR, ".empty").is_displayed()

    # The first request starts a process: its bar appears.
    first = request_pid(server)
    until(browser, lambda d: row(d, app, first), f"process {first}")
    bar = row(browser, app, first)[0].find_element(By.CSS_SELECTOR, '[role="meter"]')
    assert bar.get_attribute("aria-valuenow") == "0"
    assert not section.find_element(By.CSS_SELECTOR, ".empty").is_displayed()

    # A blocking restart stops it; the next request is served by a new one.
    outcome = section.find_element(By.CSS_SELECTOR, "output.outcome")
    browser.find_element(By.CSS_SELECTOR, f'button[data-action="restart"][data-app="{app}"]').click()
    until(browser, lambda d: outcome.get_attribute("data-outcome") == "ok", "the restart's outcome")
    assert "Restarting" in outcome.text
    until(browser, lambda d: not row(d, app, first), f"process {first} gone")
    second = request_pid(server)
    assert second != first
    until(browser, lambda d: row(d, app, second), f"process {second}")

    # A read-only user may look but not act: the page says why.
    admin.sign_in(browser, "ro_admin", admin.read_only)
    browser.find_element(By.CSS_SELECTOR, f'button[data-action="rolling"][data-app="{app}"]').click()
    until(browser, lambda d: outcome.get_attribute("data-status") == "403", "the refusal")
    assert "read-only" in outcome.text and outcome.get_attribute("data-outcome") == "error"
    admin.sign_in(browser, "admin", admin.full)

    # Detach takes the process out; the row goes when it has stopped.
    row(browser, app, second)[0].find_element(By.CSS_SELECTOR, f'button[data-pid="{second}"]').click()
    until(browser, lambda d: outcome.get_attribute("data-outcome") == "ok" and "detached" in outcome.text,
          "the detach outcome")
    until(browser, lambda d: not row(d, app, second), f"process {second} gone")

    # Real use, for the picture: a few seconds of traffic, then slow requests in flight.
    traffic(server, 8.0)
    held = [RawRequest(server.port, "/sleep?ms=5000") for _ in range(3)]
    until(browser, lambda d: sum(number(r, "data-sessions") for r in d.find_elements(By.CSS_SELECTOR, "tr[data-pid]"))
          >= 3, "requests in flight")
    until(browser, lambda d: number(d.find_element(By.CSS_SELECTOR, 'svg[data-chart="rps"]'), "data-points") >= 8,
          "the chart")
    state = admin.get_json("dashboard.json")
    [group] = state["pool"]["groups"]
    assert any(point["rps"] > 0 for point in group["rates"])
    assert group["rps"] > 0 and group["latency_ms"] > 0
    assert state["server"]["requests_in_flight"] >= 3
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()  # no hover left over
    screenshot = DOCS_SCREENSHOT if os.environ.get("PASSENGER_UPDATE_SCREENSHOT") else tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000, "a page with something on it"
    for request in held:
        assert request.response(30).status == 200


def test_dashboard_shows_spawn_errors_with_the_apps_output(serve: Callable[..., Server],
                                                           browser: webdriver.Chrome) -> None:
    command = f"{APP_PYTHON} -c \"print('loading config/database.yml'); raise SystemExit('database.yml: not found')\""
    admin = start(serve, "--app-root", str(APPS), "--app-start-command", command)
    admin.sign_in(browser, "admin", admin.full)
    browser.get(admin.url)
    error = until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "section[data-app] details[data-error-id]"),
                  "a spawn error")
    assert len(error.get_attribute("data-error-id")) == 8
    error.find_element(By.TAG_NAME, "summary").click()
    output = error.find_element(By.TAG_NAME, "pre").text
    assert "loading config/database.yml" in output and "database.yml: not found" in output
    assert "Problem:" in error.text and "Solution:" in error.text
