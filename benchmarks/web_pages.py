"""Time the web UI's pages with 100 000 specimens in SQLite (bulk-inserted), and print them.

    python benchmarks/web_pages.py [--specimens 100000] [--repeat 3] [--keep DIR] [--json]

Each page is requested through the ASGI app in-process (no network), best of ``--repeat``; the
numbers are server time: SQL, templates and the response. The data: 10 samples, plates of 2 000
specimens each, one classification per specimen with a random probability, one in 50 verified.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--specimens", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="Folder to keep the database in.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from fastapi.testclient import TestClient
    from records_fixtures import lab_settings, open_lab_db
    from test_web import LOCAL, PAGES_AT_SCALE, TOKEN, bulk_lab, render_times

    from labpipe.web import create_web_app

    folder = args.keep or Path(tempfile.mkdtemp(prefix="labpipe-web-bench-"))
    settings = lab_settings(folder / "data", **{"api.token": TOKEN})
    factory = open_lab_db(settings)
    started = time.perf_counter()
    bulk_lab(settings, factory, n=args.specimens)
    inserted = time.perf_counter() - started
    client = TestClient(create_web_app(settings, session_factory=factory), client=LOCAL)
    pages = [*PAGES_AT_SCALE, "/exports/counts.csv?sample=B3"]
    times = render_times(client, pages, repeat=args.repeat)
    factory.kw["bind"].dispose()
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps({"specimens": args.specimens, "insert_seconds": round(inserted, 1), "ms": times}))
        return
    print(f"{args.specimens:,} specimens inserted in {inserted:.1f} s; best of {args.repeat}:")
    for url, ms in times.items():
        print(f"  {ms:8.1f} ms  {url}")


if __name__ == "__main__":
    main()
