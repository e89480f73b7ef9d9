"""A pytest plugin for tests/test_bad_input_census.py: at the end of collection, writes one
record per collected test case marked `bad_input` to the JSON file $SHADOWFT_BAD_INPUT_CENSUS."""

import inspect
import json
import os

CENSUS_FILE = "SHADOWFT_BAD_INPUT_CENSUS"


def pytest_collection_finish(session):
    records = []
    for item in session.items:
        marker = item.get_closest_marker("bad_input")
        if marker is None:
            continue
        records.append(
            {
                "test": item.nodeid,
                "what": marker.args[0] if marker.args else None,
                "caught": marker.kwargs.get("caught"),
                "source": inspect.getsource(item.function),
            }
        )
    with open(os.environ[CENSUS_FILE], "w", encoding="utf-8") as handle:
        json.dump(records, handle)
