"""The naive poller the benchmark compares against: every cycle, the full search pages plus one
`GET /studies/{nctId}` per study, diffing whole records against the previous cycle's.

    python bench/naive.py --base-url URL --state FILE [--condition TEXT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--condition", default="myasthenia gravis")
    args = parser.parse_args()
    session = requests.Session()
    ids: list[str] = []
    params = {"query.cond": args.condition, "pageSize": "100"}
    while True:
        page = session.get(f"{args.base_url}/studies", params=params, timeout=60).json()
        ids += [s["protocolSection"]["identificationModule"]["nctId"] for s in page["studies"]]
        token = page.get("nextPageToken")
        if not token or not page["studies"]:
            break
        params["pageToken"] = token
    records = {i: session.get(f"{args.base_url}/studies/{i}", timeout=60).json() for i in ids}
    previous = json.loads(args.state.read_text()) if args.state.exists() else None
    changes = 0
    if previous is not None:
        changes = sum(1 for i, r in records.items() if previous.get(i) != r)
    args.state.write_text(json.dumps(records))
    print(json.dumps({"changes": changes, "studies": len(records)}))


if __name__ == "__main__":
    main()
