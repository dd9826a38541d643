"""Drive the web demo in a real headless browser: type a sentence, click Compare, read both
predictions and save a screenshot.

    python scripts/demo_browser.py http://127.0.0.1:7860 --text "Sales fell 10 %." --screenshot demo.png

Uses Playwright with Debian's Chromium (``apt install chromium``; ``--browser`` for another
binary). Prints the two status lines as JSON: {"teacher": "...", "student": "..."}; exits 1 if
either prediction does not appear within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import sys

# without the background-networking flags Chromium keeps trying hosts this closed network refuses
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def run(url: str, text: str, screenshot: str, browser_path: str, timeout_s: float) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url, timeout=timeout_s * 1000)
            box = page.locator("#text textarea")
            box.fill(text)
            page.locator("#compare").click()
            statuses = {}
            for name in ("teacher", "student"):
                status = page.locator(f"#{name}_status")
                # the answer names the model and the latency of this request
                status.filter(has_text=" ms ").wait_for(timeout=timeout_s * 1000)
                statuses[name] = status.inner_text().strip()
            page.screenshot(path=screenshot, full_page=True)
            return statuses
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--text", default="Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.")
    parser.add_argument("--screenshot", default="demo.png")
    parser.add_argument("--browser", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    try:
        statuses = run(args.url, args.text, args.screenshot, args.browser, args.timeout)
    except Exception as error:  # a timeout or a page without the demo's elements
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(statuses))


if __name__ == "__main__":
    main()
