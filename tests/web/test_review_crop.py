"""The item page outlines the square crop of a wide frame that made the model fire."""

from __future__ import annotations

import re

from monitor.store import session_scope, record_predictions
from review_helpers import outcome


def test_item_page_outlines_the_crop_that_fired(engine, snapshots, alice):
    with session_scope(engine) as session:
        (item_id,) = record_predictions([outcome(crop=(16, 0, 48, 48))], session=session, snapshots=snapshots)
        (whole_id,) = record_predictions([outcome(seed=1)], session=session, snapshots=snapshots)
    assert alice.client.get(f"/api/v1/items/{item_id}").json()["crop"] == [16, 0, 48, 48]
    page = alice.client.get(f"/items/{item_id}").text
    assert re.search(r'<svg class="crop-outline" viewBox="0 0 64 48"', page)
    assert '<rect x="16" y="0" width="48" height="48">' in page
    assert "crop-outline" not in alice.client.get(f"/items/{whole_id}").text
