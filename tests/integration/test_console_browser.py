"""The console in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
driven by selenium, against the app served over HTTP, a Celery worker and a loopback receiver.

Nothing is downloaded: selenium is given /usr/bin/chromedriver. Screenshots of every page, at
1280 and 390 px wide, go to artefacts/screenshots/ (git-ignored).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import requests
from standardwebhooks import Webhook

from scripts.harness import Receiver, Reply, wait_until
from tests.integration.conftest import make_tenant
from tests.support import sql

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "artefacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDE, NARROW = (1280, 900), (390, 844)
SCRIPT = "<script>window.pwned = 1; document.title = 'pwned'</script>"

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        "no headless browser: apt-get install chromium chromium-driver", allow_module_level=True
    )

from selenium import webdriver  # noqa: E402  (only with a browser to drive)
from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


class LiveServer:
    """The app served over HTTP by werkzeug in a thread of the test process."""

    def __init__(self, app: Any):
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def live(app: Any) -> Iterator[LiveServer]:
    server = LiveServer(app)
    yield server
    server.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)  # where each test saves its screenshots
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        f"--window-size={WIDE[0]},{WIDE[1]}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _replaced(element: Any) -> bool:
    """True once `element` is no longer in the page. Chromium reports a node of a replaced
    document as stale, or (while the new one loads) as not belonging to the document."""
    try:
        element.is_enabled()
    except WebDriverException:  # StaleElementReferenceException is one
        return True
    return False


class Console:
    """A person at the console: pages by path, forms by label, checks after each page."""

    def __init__(self, driver: Any, base: str):
        self.driver, self.base = driver, base
        self.shots: list[str] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def fill(self, label_id: str, value: str) -> None:
        field = self.driver.find_element(By.ID, label_id)
        field.clear()
        field.send_keys(value)

    def press(self, text: str) -> None:
        """Press a button and wait for the page its form leads to."""
        self.click(self.driver.find_element(By.XPATH, f"//button[normalize-space()='{text}']"))

    def click(self, element: Any) -> None:
        """Click a link or button and wait until the next page has replaced this one."""
        page = self.driver.find_element(By.TAG_NAME, "html")
        element.click()
        WebDriverWait(self.driver, 20).until(lambda _: _replaced(page))

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def width(self, size: tuple[int, int]) -> None:
        width, height = size
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
        )

    def check_page(self, name: str) -> None:
        """At both widths: nothing overflows sideways, no script ran; save a screenshot."""
        for size in (WIDE, NARROW):
            self.width(size)
            inner = self.driver.execute_script("return window.innerWidth")
            scroll = self.driver.execute_script("return document.documentElement.scrollWidth")
            assert inner == size[0], (name, inner)
            assert scroll <= inner, f"{name} overflows at {size[0]} px: {scroll} > {inner}"
            assert self.driver.execute_script("return window.pwned") is None, name
            path = SHOTS / f"{name}-{size[0]}.png"
            self.driver.save_screenshot(str(path))
            self.shots.append(path.name)
        self.width(WIDE)
        with pytest.raises(NoAlertPresentException):
            _ = self.driver.switch_to.alert  # a script that ran would have opened one


class Acme(NamedTuple):
    """The tenant a walk through the pages starts from, and a session of the API with its key:
    what the tenant's own app does meanwhile."""

    tenant: dict[str, Any]
    api: requests.Session


@pytest.fixture
def acme(start_worker: Callable[..., Any]) -> Acme:
    """The tenant "acme" and its API session, with a worker that delivers its events."""
    start_worker()
    tenant = make_tenant("acme")
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {tenant['key']}"
    return Acme(tenant, api)


def wait_for_text(console: Console, path: str, needle: str, timeout: float = 30) -> None:
    def shown() -> bool:
        console.open(path)
        return needle in console.text()

    wait_until(shown, timeout=timeout, interval=0.5, message=f"{needle!r} on {path}")


def test_an_operator_works_through_the_console_in_a_browser(
    browser: Any, live: LiveServer, receiver: Receiver, acme: Acme
) -> None:
    tenant, api = acme
    console = Console(browser, live.url)

    # Sign in: a page of the console leads to the sign-in form, and back after it.
    console.open("/console/deliveries")
    assert "/console/sign-in" in browser.current_url
    console.check_page("sign-in")
    console.fill("api_key", tenant["key"])
    console.press("Sign in")
    assert browser.current_url == live.url + "/console/deliveries"
    assert "acme" in console.text()

    # Create a subscription; its secret is shown once.
    console.open("/console/subscriptions/new")
    console.check_page("subscription-new")
    console.fill("url", receiver.url("/ok"))
    console.fill("event_types", "order.created")
    console.press("Create")
    secret = browser.find_element(By.ID, "new-secret").text
    assert secret.startswith("whsec_")
    console.check_page("subscription-created")
    console.open("/console/subscriptions")
    console.click(browser.find_element(By.PARTIAL_LINK_TEXT, receiver.url("/ok")))
    subscription_path = browser.current_url.removeprefix(live.url)
    assert subscription_path.startswith("/console/subscriptions/")

    # Publish an event through the API; its delivery and attempt appear.
    event = api.post(
        live.url + "/v1/events", json={"event_type": "order.created", "payload": {"x": SCRIPT}}
    ).json()
    receiver.wait_for("/ok", 1)
    wait_for_text(console, "/console/deliveries", "delivered")
    console.check_page("deliveries")
    console.click(browser.find_element(By.CSS_SELECTOR, "table a[href^='/console/deliveries/']"))
    assert "#1" in console.text() and "HTTP 204" in console.text()
    console.check_page("delivery")
    console.open(f"/console/events/{event['id']}")
    assert SCRIPT in browser.find_element(By.ID, "payload").text  # shown as text
    assert browser.title != "pwned"
    console.check_page("event")

    # A dead letter: every attempt fails, then a retry from the console delivers it.
    receiver.plan("/down", then=Reply(500, body=SCRIPT.encode()))
    api.post(
        live.url + "/v1/subscriptions", json={"url": receiver.url("/down"), "event_types": ["*"]}
    )
    api.post(live.url + "/v1/events", json={"event_type": "order.paid", "payload": {"n": 1}})
    wait_for_text(console, "/console/dead-letters", "order.paid", timeout=60)
    console.check_page("dead-letters")
    console.click(browser.find_element(By.CSS_SELECTOR, "table a[href^='/console/deliveries/']"))
    assert "#3" in console.text() and "HTTP 500" in console.text()
    assert SCRIPT in console.text()  # the subscriber's answer, shown as text
    console.check_page("delivery-failed")
    console.open("/console/dead-letters")
    receiver.plan("/down", then=Reply(204))
    before = len(receiver.at("/down"))
    browser.find_element(By.CSS_SELECTOR, "input[type=checkbox][name=id]").click()
    console.press("Retry selected")
    assert "Sent again: 1." in console.text()
    wait_until(lambda: len(receiver.at("/down")) > before, message="the retried dead letter")
    wait_for_text(
        console, "/console/deliveries?status=delivered&event_type=order.paid", "order.paid"
    )

    # Rotate the secret: the new one is shown once and signs the next delivery.
    console.open(subscription_path)
    console.check_page("subscription")
    console.press("Rotate secret")
    new_secret = browser.find_element(By.ID, "new-secret").text
    assert new_secret.startswith("whsec_") and new_secret != secret
    console.check_page("subscription-rotated")
    console.open(subscription_path)
    assert new_secret not in console.text()
    api.post(live.url + "/v1/events", json={"event_type": "order.created", "payload": {"n": 2}})
    second = receiver.wait_for("/ok", 2)[1]
    assert Webhook(new_secret).verify(second.body, second.headers)["data"] == {"n": 2}

    # The overview and the lists, then the navigation at phone width.
    console.open("/console/")
    assert "Events/s" in console.text()
    console.check_page("overview")
    console.open("/console/subscriptions")
    console.check_page("subscriptions")
    console.open("/console/event-types")
    console.check_page("event-types")
    console.width(NARROW)
    for link, path in (
        ("Deliveries", "/console/deliveries"),
        ("Dead letters", "/console/dead-letters"),
        ("Event types", "/console/event-types"),
        ("Subscriptions", "/console/subscriptions"),
        ("Overview", "/console/"),
    ):
        console.click(browser.find_element(By.LINK_TEXT, link))
        assert browser.current_url == live.url + path, link
    console.press("Sign out")
    assert "/console/sign-in" in browser.current_url
    console.open("/console/")
    assert "/console/sign-in" in browser.current_url
    assert len(console.shots) >= 20


def test_a_consumer_adds_an_endpoint_through_a_portal_link_in_a_browser(
    browser: Any, live: LiveServer, receiver: Receiver, acme: Acme
) -> None:
    tenant, api = acme
    api.post(live.url + "/v1/consumers", json={"uid": "cust-42", "name": "Customer 42"})
    sql(
        "INSERT INTO event_types (id, tenant_id, name, description)"
        " VALUES (gen_random_uuid(), :t, 'invoice.paid', 'An invoice was paid')",
        t=tenant["id"],
    )
    url = api.post(live.url + "/v1/consumers/cust-42/portal-links").json()["url"]
    console = Console(browser, live.url)

    browser.get(url)
    assert "Customer 42" in console.text() and "No endpoints yet." in console.text()
    console.check_page("portal-endpoints")
    console.click(browser.find_element(By.LINK_TEXT, "Add endpoint"))
    console.fill("url", receiver.url("/customer"))
    browser.find_element(By.CSS_SELECTOR, "input[name=event_type][value='invoice.paid']").click()
    console.check_page("portal-endpoint-new")
    console.press("Add")
    secret = browser.find_element(By.ID, "new-secret").text
    assert secret.startswith("whsec_")
    console.check_page("portal-endpoint")

    # The tenant's app publishes to this consumer: the endpoint gets it, signed with the secret.
    api.post(
        live.url + "/v1/events",
        json={"event_type": "invoice.paid", "payload": {"n": SCRIPT}, "consumer": "cust-42"},
    )
    received = receiver.wait_for("/customer", 1)[0]
    assert Webhook(secret).verify(received.body, received.headers)["data"] == {"n": SCRIPT}

    console.press("Send test event")
    wait_until(lambda: len(receiver.at("/customer")) >= 2, message="the test event")
    console.click(browser.find_element(By.LINK_TEXT, "Deliveries"))
    wait_for_text(console, browser.current_url.removeprefix(live.url), "webhook.test")
    assert "invoice.paid" in console.text()
    console.check_page("portal-deliveries")
    console.click(browser.find_element(By.CSS_SELECTOR, "table a[href*='/deliveries/']"))
    assert "#1" in console.text()
    console.check_page("portal-delivery")
    console.width(NARROW)
    console.click(browser.find_element(By.LINK_TEXT, "Endpoints"))
    assert receiver.url("/customer") in console.text()


def test_the_api_docs_page_renders_every_operation_with_the_apps_own_files(
    live: LiveServer, browser: Any
) -> None:
    """/docs is Swagger UI, its script and stylesheet served by the app (no CDN); under its
    Content-Security-Policy it draws one entry per operation of /openapi.json."""
    from webhooks.openapi import build_spec

    described = {
        (method.upper(), path)
        for path, item in build_spec()["paths"].items()
        for method in item
        if method != "parameters"
    }
    browser.get(live.url + "/docs")
    WebDriverWait(browser, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == len(described)
    )
    shown = {
        (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"),
        )
        for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")
    }
    assert shown == described
    # Everything the page loaded came from the app itself.
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(url.startswith(live.url) for url in loaded), loaded
    browser.save_screenshot(str(SHOTS / "api-docs.png"))
