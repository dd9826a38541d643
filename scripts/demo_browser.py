"""Drive the web demo in a real headless browser: type a sentence, click Compare, read both
predictions and save a screenshot; or, with ``--swagger``, open a running service's ``/docs``
with every request that leaves the machine refused (as offline) and list the operations the
page rendered.

    python scripts/demo_browser.py http://127.0.0.1:7860 --text "Sales fell 10 %." --screenshot demo.png
    python scripts/demo_browser.py http://127.0.0.1:8000/docs --swagger --screenshot docs.png

Uses Playwright with Debian's Chromium (``apt install chromium``; ``--browser`` for another
binary). Prints the two status lines as JSON: {"teacher": "...", "student": "..."}; exits 1 if
either prediction does not appear within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# without the background-networking flags Chromium keeps trying hosts this closed network refuses
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def run(url: str, text: str, screenshot: str, browser_path: str, timeout_s: float,
        upload: str | None = None) -> dict:
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
            result = {}
            for name in ("teacher", "student"):
                status = page.locator(f"#{name}_status")
                # the answer names the model and the latency of this request
                status.filter(has_text=" ms ").wait_for(timeout=timeout_s * 1000)
                result[name] = status.inner_text().strip()
            table = page.locator("#benchmark_table")
            if table.count():  # the compact benchmark table: its header and rows as shown
                result["table"] = grid(table)
                result["summary"] = page.locator("#summary").inner_text().strip()
            page.screenshot(path=screenshot, full_page=True)
            if upload:
                page.get_by_role("tab", name="Label a file").click()
                page.locator("#upload input[type=file]").set_input_files(upload)
                # the upload has reached the server when the file's name shows
                page.locator("#upload").filter(has_text=Path(upload).stem).wait_for(
                    timeout=timeout_s * 1000)
                page.locator("#label_file").click()
                # the labelled file is offered for download once every text is labelled
                page.get_by_text(f"{Path(upload).stem}_labelled").first.wait_for(
                    timeout=timeout_s * 1000)
                preview = page.locator("#labelled_preview")
                result["labelled"] = grid(preview)
                page.screenshot(path=str(Path(screenshot).with_suffix("")) + "_upload.png",
                                full_page=True)
            return result
        finally:
            browser.close()


def grid(table) -> list[list[str]]:
    """A Gradio dataframe's header and rows as shown (its body is a grid of ARIA rows)."""
    header = [cell.inner_text().strip() for cell in table.locator("thead th").all()]
    rows = [[cell.inner_text().strip() for cell in row.locator("[role=gridcell]").all()]
            for row in table.locator(".virtual-row, [role=row]:has([role=gridcell])").all()]
    unique = []
    for row in rows:  # a row can match both selectors
        if row and row not in unique:
            unique.append(row)
    return [header, *unique]


def swagger(url: str, screenshot: str, browser_path: str, timeout_s: float) -> dict:
    """The operations (method and path) the service's Swagger UI rendered, and the requests
    for other hosts that were refused."""
    from urllib.parse import urlparse

    from playwright.sync_api import sync_playwright

    host = urlparse(url).hostname
    refused = []

    def offline(route):
        if urlparse(route.request.url).hostname == host:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.route("**/*", offline)
            page.goto(url, timeout=timeout_s * 1000)
            page.locator(".opblock-summary").first.wait_for(timeout=timeout_s * 1000)
            operations = [block.inner_text().split("\n")[:2]
                          for block in page.locator(".opblock-summary").all()]
            page.screenshot(path=screenshot, full_page=True)
            return {"operations": [" ".join(parts) for parts in operations], "refused": refused}
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--text", default="Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.")
    parser.add_argument("--screenshot", default="demo.png")
    parser.add_argument("--browser", default="/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--upload", help="a file to label in the demo's upload tab (its screenshot "
                        "is saved beside --screenshot as NAME_upload.png)")
    parser.add_argument("--swagger", action="store_true",
                        help="the URL is a service's /docs: check that it renders offline")
    args = parser.parse_args()
    try:
        if args.swagger:
            statuses = swagger(args.url, args.screenshot, args.browser, args.timeout)
        else:
            statuses = run(args.url, args.text, args.screenshot, args.browser, args.timeout,
                           args.upload)
    except Exception as error:  # a timeout or a page without the demo's elements
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(statuses))


if __name__ == "__main__":
    main()
