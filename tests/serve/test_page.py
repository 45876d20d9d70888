"""The chat page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium)."""

import json
import os
import shutil
import time

import httpx
import pytest

from colossal_hammer.serve.__main__ import ServeConfig, make_app
from tests.serve.live import LiveServer

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--window-size=1000,800"]


class Recorder:
    """ASGI wrapper keeping each chat request's JSON body: what the page really sent."""

    def __init__(self, app):
        self.app, self.bodies = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        parts = []

        async def recording():
            message = await receive()
            if message["type"] == "http.request":
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.bodies.append(json.loads(b"".join(parts)))
            return message

        return await self.app(scope, recording, send)


@pytest.fixture
def browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        if os.environ.get("CI"):  # CI installs them (make test → make browser): a skip there would hide a regression
            pytest.fail("chromium/chromedriver missing in CI; `make browser` should have installed them")
        pytest.skip("chromium and chromedriver are not installed (as root, `make test` installs Debian's chromium "
                    "chromium-driver; or apt-get install them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def wait(condition, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_chat_page_streams_keeps_history_stops_and_starts_over(served_model, browser, tmp_path):
    import openai
    from selenium.webdriver.common.by import By

    app = make_app(ServeConfig(model=served_model, served_model_name="tiny-page"))
    recorder = Recorder(app)
    with LiveServer(recorder) as server:
        engine = app.state.served.engine
        browser.get(server.url + "/")
        find = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
        wait(lambda: find("#model-name").text == "tiny-page")
        hint = "return getComputedStyle(document.getElementById('messages'), '::before').content"
        assert "Type a message" in browser.execute_script(hint)  # an empty chat says what to do
        assert httpx.get(server.url + "/favicon.ico").headers["content-type"] == "image/svg+xml"
        for field, value in (("#temperature", "0"), ("#max-tokens", "10")):
            find(field).clear()
            find(field).send_keys(value)
        # every text the reply bubble shows on its way, to see tokens arrive one by one
        browser.execute_script("""
            window.seen = [];
            new MutationObserver(() => {
              const r = document.querySelectorAll('.msg.assistant');
              if (r.length) window.seen.push(r[r.length - 1].textContent);
            }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
        """)

        def turn(text):
            count = len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
            find("#input").send_keys(text)
            find("#send").click()
            wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant:not(.streaming)")) > count)
            return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text

        first = turn("什么是人工智能？")
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        question = [{"role": "user", "content": "什么是人工智能？"}]
        answer = api.chat.completions.create(model="tiny-page", messages=question, temperature=0, max_tokens=10)
        expected = answer.choices[0].message.content
        meta = browser.find_elements(By.CSS_SELECTOR, ".meta")[-1]
        assert meta.get_attribute("data-finish") == answer.choices[0].finish_reason  # why it ended, under it
        assert f"{answer.usage.completion_tokens} tokens (prompt {answer.usage.prompt_tokens})" in meta.text
        assert first == expected.strip()  # the page shows the greedy reply (HTML trims edge whitespace)
        assert browser.execute_script(hint) == "none"  # the hint goes with the first message
        grown = [s for s in dict.fromkeys(browser.execute_script("return window.seen;")) if s]
        assert len(grown) >= 2 and all(b.startswith(a) for a, b in zip(grown, grown[1:]))  # streamed in
        second = turn("Tell me more.")
        assert second
        sent = recorder.bodies[-1]
        assert sent["messages"] == [{"role": "user", "content": "什么是人工智能？"},
                                    {"role": "assistant", "content": expected},
                                    {"role": "user", "content": "Tell me more."}]
        assert sent["temperature"] == 0 and sent["max_tokens"] == 10 and sent["stream"] is True
        browser.save_screenshot(str(tmp_path / "chat.png"))
        assert (tmp_path / "chat.png").stat().st_size > 1000

        # stop: a long reply ends where it is, and the server frees its row
        find("#max-tokens").clear()
        find("#max-tokens").send_keys("1500")
        find("#input").send_keys("A long answer, please.")
        find("#send").click()
        wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant.streaming")) == 1
             and browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text)
        row = wait(lambda: (batch := engine.batch) and batch.rows[0])  # read once: the engine thread replaces it
        find("#stop").click()
        wait(lambda: not browser.find_elements(By.CSS_SELECTOR, ".msg.assistant.streaming"))
        wait(lambda: engine.batch is None, seconds=10)
        assert row.cancelled and len(row.generated) < 1500  # stopped, not finished
        assert browser.find_elements(By.CSS_SELECTOR, ".meta")[-1].text == "stopped by you"
        assert not find("#send").get_attribute("disabled")
        # new chat: an empty page, and the next request carries no history
        find("#new-chat").click()
        assert not browser.find_elements(By.CSS_SELECTOR, ".msg")
        find("#max-tokens").clear()
        find("#max-tokens").send_keys("3")
        turn("hi")
        assert recorder.bodies[-1]["messages"] == [{"role": "user", "content": "hi"}]
        meta = find(".meta")  # a max-tokens stop says so, with the counts
        assert meta.get_attribute("data-finish") == "length" and meta.text.startswith("cut at max tokens · 3 tokens")
