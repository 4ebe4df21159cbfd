"""Open a run's report.html in a real headless browser: screenshot it and check that every image loads.

    python benchmarks/check_report.py RUN_DIR [--screenshot OUT.png]

Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`) and
`pip install selenium`; not part of the test suite, which must run without a browser.
Exit code 0 when the page renders with every <img> decoded, 1 otherwise; prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def check_report(run_dir: Path, screenshot: Path) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page = (run_dir / "report.html").resolve()
    if not page.is_file():
        raise SystemExit(f"error: {page} does not exist: run `vqvae evaluate {run_dir}` first")
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        raise SystemExit("error: chromedriver not found (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                 "--allow-file-access-from-files"):
        options.add_argument(flag)
    if shutil.which("chromium"):
        options.binary_location = shutil.which("chromium")
    # An explicit driver path: Selenium would otherwise try to download one.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,"
            " width: i.naturalWidth, height: i.naturalHeight}));")
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1200, min(max(900, height + 100), 8000))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        title = driver.title
        headings = driver.execute_script("return Array.from(document.querySelectorAll('h1,h2')).map(h => h.textContent)")
    finally:
        driver.quit()
    broken = [i["src"] for i in images if not i["complete"] or i["width"] == 0]
    return {"page": str(page), "title": title, "headings": headings, "images": len(images),
            "broken_images": broken, "screenshot": str(screenshot), "ok": bool(images) and not broken}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--screenshot", type=Path, help="where to save the screenshot (default: RUN/report.png)")
    args = parser.parse_args()
    result = check_report(args.run_dir, args.screenshot or args.run_dir / "report_screenshot.png")
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
