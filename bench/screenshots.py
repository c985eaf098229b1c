"""
``python -m bench.screenshots``: the status page's screenshot for the README,
``docs/status-page.png``.

Runs the browser test (``tests/project/test_status_page_browser.py``), which
serves the page with Django's live server, fills it with a busy process's
state (an open circuit, a closed one, one shared through Redis) and saves
what headless Chromium shows at 1280 px. Needs what that test needs: Debian's
``chromium``, Playwright (no ``playwright install``) and Redis at
``PATCHBOARD_TEST_REDIS_URL``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEST = "tests/project/test_status_page_browser.py"


def main() -> int:
    DOCS.mkdir(exist_ok=True)
    # CI=true: a missing browser or Redis fails the run instead of skipping past the picture.
    env = {**os.environ, "PATCHBOARD_SCREENSHOTS": str(DOCS), "CI": "true"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST]
    done = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if done.returncode == 0:
        print(f"wrote {(DOCS / 'status-page.png').relative_to(ROOT)}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
