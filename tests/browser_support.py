"""A real browser for the tests: Debian's headless Chromium driven by
Selenium through Debian's chromedriver. Nothing is downloaded: the driver
path is given, so Selenium Manager is never asked for a browser or driver.
A missing browser is installed with apt-get (as CI runs, as root), or the
test fails; it never skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0  # seconds a condition may take on a loaded 2-core machine

# no network but ours, no first-run or background chatter, a fresh profile
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", "--no-default-browser-check"]


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"Chromium is required for the browser tests; {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are required for the browser tests and were not installed")


class Browser:
    """One person at one browser window, with the gchat app open."""

    def __init__(self, url: str, width: int = 1200, height: int = 760) -> None:
        ensure_chromium()
        # selenium is imported here so that a missing package fails these tests only
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        os.environ.setdefault("SE_AVOID_STATS", "true")
        self.profile = tempfile.mkdtemp(prefix="gchat-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={width},{height}")
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.url = url
        self.driver.get(url)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    # --- looking -------------------------------------------------------------

    def wait(self, check: Any, what: str, timeout: float = WAIT) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        def safe(driver: Any) -> Any:
            try:
                return check(driver)
            except StaleElementReferenceException:
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(safe)
        except Exception as e:
            raise AssertionError(f"{what}: not seen within {timeout:.0f} s\n{self.console()}") from e

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def finds(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def visible(self, css: str) -> Any:
        return self.wait(lambda d: next((e for e in self.finds(css) if e.is_displayed()), False), css)

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def console(self) -> str:
        try:
            return "\n".join(str(e) for e in self.driver.get_log("browser"))
        except Exception:
            return ""

    def connection(self) -> str:
        return str(self.find("#connection").get_attribute("data-conn"))

    def messages(self) -> list[str]:
        return self.texts("#message-list .msg .text")

    def texts(self, css: str) -> list[str]:
        """The texts of the elements matching `css`, read in one go (the app
        redraws its lists whole: elements found one call earlier may be gone)."""
        return [str(t) for t in self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent)", css)]

    def attrs(self, css: str, name: str) -> list[str]:
        """One attribute of each element matching `css`, read in one go."""
        return [str(t) for t in self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map((e) => e.getAttribute(arguments[1]))", css, name)]

    def wait_message(self, text: str) -> None:
        self.wait(lambda d: text in self.messages(), f"message {text!r} in the open conversation")

    def unread(self, key: str) -> int:
        badges = self.texts(f'.conv-item[data-key="{key}"] .badge')
        return int(badges[0]) if badges else 0

    def unlabelled(self) -> list[str]:
        """The visible controls a screen reader could not name."""
        return list(self.driver.execute_script("""
            const bad = [];
            for (const e of document.querySelectorAll('button, input, textarea, [role=menuitem], [role=tab]')) {
              if (!e.getClientRects().length) continue;  // not shown
              const labels = e.labels ? [...e.labels].map((l) => l.textContent).join('') : '';
              const by = (e.getAttribute('aria-labelledby') || '').split(' ').filter(Boolean)
                .map((id) => (document.getElementById(id) || {}).textContent || '').join('');
              const name = [e.getAttribute('aria-label'), labels, by, e.textContent, e.title, e.placeholder]
                .map((x) => (x || '').trim()).find(Boolean);
              if (!name) bad.push(e.outerHTML.slice(0, 160));
            }
            return bad;
        """))

    def focused(self) -> Any:
        return self.driver.switch_to.active_element

    def keys(self, *keys: str) -> None:
        """Keys typed into whatever has the focus, as a keyboard user does."""
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).send_keys(*keys).perform()

    def tab_to(self, css: str, limit: int = 40) -> None:
        """Press Tab until the element matching `css` has the focus."""
        from selenium.webdriver.common.keys import Keys

        for _ in range(limit):
            if self.driver.execute_script("return document.activeElement.matches(arguments[0])", css):
                return
            self.keys(Keys.TAB)
        raise AssertionError(f"{css}: never reached with Tab")

    # --- doing ---------------------------------------------------------------

    def click(self, css: str) -> str:
        """Click the visible element matching `css`, found afresh until the
        click lands: the app redraws its lists whole (presence, messages,
        search results). Answers the element's text before the click."""
        done: list[str] = []

        def attempt(d: Any) -> bool:
            item = next((e for e in self.finds(css) if e.is_displayed()), None)
            if item is None:
                return False
            text = str(item.text)
            item.click()  # a stale one raises, and the wait tries again
            done.append(text)
            return True

        self.wait(attempt, f"{css} clicked")
        return done[-1]

    def type_into(self, css: str, text: str) -> None:
        field = self.visible(css)
        field.clear()
        field.send_keys(text)

    def register(self, name: str, password: str = "secret") -> int:
        self.visible("#register-name")
        if self.find("#tab-register").get_attribute("aria-selected") != "true":
            self.find("#tab-register").click()
        self.type_into("#register-name", name)
        self.type_into("#register-password", password)
        self.find("#register-form button[type=submit]").click()
        me = self.wait(lambda d: self.find("#me-id").is_displayed() and self.text("#me-id"), "signed in")
        self.wait(lambda d: self.connection() == "online", "online")
        return int(me.rsplit(" ", 1)[1])

    def sign_in(self, user_id: int, password: str = "secret") -> None:
        self.visible("#tab-login").click()
        self.type_into("#login-id", str(user_id))
        self.type_into("#login-password", password)
        self.find("#login-form button[type=submit]").click()
        self.wait(lambda d: self.find("#me-id").is_displayed(), "signed in")

    def menu(self, action: str) -> None:
        self.visible("#menu-button").click()
        self.visible(f'#menu [data-action="{action}"]').click()

    def dialog(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            self.type_into(f"#dialog-{name}", value)
        self.find("#dialog-ok").click()
        self.wait(lambda d: not self.find("#dialog").is_displayed(), "the dialog closed")

    def find_people(self, query: str) -> None:
        """The finder (Add a friend) open, with what the search for `query` found."""
        self.menu("add-friend")
        self.type_into("#finder-query", query)

    def request_friend(self, user_id: int, query: str | None = None, note: str = "") -> None:
        """Ask a user to be friends from the finder: searched by name when
        `query` is given, else by id."""
        self.find_people(query or str(user_id))
        if note:
            self.type_into("#finder-note", note)
        label = self.click(f'#finder-results li[data-id="{user_id}"] button.primary')
        if label == "Add":
            self.wait(lambda d: self.text(f'#finder-results li[data-id="{user_id}"] button') in ("Requested", "Chat"),
                      "the request sent")
        self.close_finder()

    def close_finder(self) -> None:
        if self.find("#finder").is_displayed():
            self.find("#finder-close").click()
        self.wait(lambda d: not self.find("#finder").is_displayed(), "the finder closed")

    def accept(self, user_id: int) -> None:
        """Accept a friend request shown in the sidebar."""
        self.click(f'#requests li[data-id="{user_id}"][data-dir="in"] .accept')
        self.wait(lambda d: self.finds(f'.conv-item[data-key="u:{user_id}"]'), f"friend {user_id} listed")

    def presence(self, user_id: int) -> str:
        """A friend's state as the conversation list shows it (its dot)."""
        dots = self.attrs(f'.conv-item[data-key="u:{user_id}"] .presence', "class")
        return "online" if dots and "online" in dots[0].split() else "offline"

    def conv_action(self, label: str) -> None:
        """An item of the open conversation's own menu."""
        self.visible("#conv-menu-button").click()
        item = self.wait(lambda d: next((b for b in self.finds("#conv-menu button") if b.text == label), False),
                         f"{label!r} in the conversation's menu")
        item.click()

    def confirm(self) -> None:
        self.visible("#dialog-ok").click()
        self.wait(lambda d: not self.find("#dialog").is_displayed(), "the dialog closed")

    def create_group(self, name: str) -> int:
        self.menu("create-group")
        self.dialog({"name": name, "desc": "the test group"})
        # the key read at once: the list is redrawn whole as things happen
        key = self.wait(lambda d: next((str(e.get_attribute("data-key")) for e in self.finds("#groups .conv-item")
                                        if name in str(e.get_attribute("aria-label"))), False),
                        f"group {name} in the list")
        return int(key[2:])

    def join_group(self, group_id: int, query: str | None = None) -> None:
        """Join from the finder: searched by name when `query` is given, else by id."""
        self.menu("join-group")
        self.type_into("#finder-query", query or str(group_id))
        self.click(f'#finder-results li[data-id="{group_id}"] button.primary')
        self.wait(lambda d: not self.find("#finder").is_displayed(),
                  f"the finder closed (it says {self.texts('#finder-status')})")
        self.wait(lambda d: self.finds(f'.conv-item[data-key="g:{group_id}"]'), f"group {group_id} listed")

    def open(self, key: str) -> None:
        self.click(f'.conv-item[data-key="{key}"]')
        self.visible("#message-input")

    def send(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.visible("#message-input")
        box.send_keys(text)
        box.send_keys(Keys.ENTER)
        self.wait_message(text)

    def reload(self) -> None:
        self.driver.refresh()

    def quiet(self) -> None:
        """No passing notice on the screen (before a screenshot)."""
        self.wait(lambda d: not self.find("#toast").is_displayed(), "the notice gone")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
