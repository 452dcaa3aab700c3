"""Two reviewers deciding the same item at the same moment: exactly one decision wins.

Real threads against a real SQLite file (WAL), first through the store functions with one
session per thread, then over real HTTP against uvicorn with two API tokens. A barrier
releases both threads together; every round checks the item, the history and the loser's
409 body.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlmodel import Session, select

from monitor.store.reviews import DecisionConflict, decide
from monitor.store.tables import ReviewDecision, ReviewItem, User

ROUNDS = 15


def race(functions):
    """Run the functions in threads released together; return their results or exceptions."""
    barrier = threading.Barrier(len(functions))

    def run(function):
        barrier.wait()
        try:
            return function()
        except Exception as exc:  # noqa: BLE001 - the exception is the result under test
            return exc

    with ThreadPoolExecutor(len(functions)) as pool:
        return list(pool.map(run, functions))


def item_and_history(engine, item_id: int) -> tuple[ReviewItem, list[ReviewDecision]]:
    with Session(engine) as session:
        item = session.get(ReviewItem, item_id)
        history = list(session.exec(select(ReviewDecision).where(ReviewDecision.item_id == item_id)).all())
    return item, history


@pytest.mark.parametrize("with_version", [True, False], ids=["version", "pending-only"])
def test_store_two_sessions_one_winner(engine, users, add_items, with_version):
    with Session(engine) as session:
        alice, bob = (session.exec(select(User).where(User.name == n)).one() for n in ("alice", "bob"))
    for item_id in add_items(ROUNDS):

        def attempt(user, action):
            def go():
                with Session(engine, expire_on_commit=False) as session:
                    item, _ = decide(item_id, session=session, reviewer=user, action=action,
                                     expected_version=0 if with_version else None)
                    return item
            return go

        results = race([attempt(alice, "approve"), attempt(bob, "reject")])
        winners = [r for r in results if isinstance(r, ReviewItem)]
        losers = [r for r in results if isinstance(r, DecisionConflict)]
        assert len(winners) == 1 and len(losers) == 1, results
        item, history = item_and_history(engine, item_id)
        assert item.version == 1 and item.status == winners[0].status
        assert len(history) == 1 and history[0].status == item.status
        assert losers[0].current.status == item.status and losers[0].current.version == 1


def test_http_two_reviewers_one_winner_the_other_gets_409(engine, live_server, api_token, add_items):
    tokens = {"alice": api_token("alice"), "bob": api_token("bob")}
    clients = {name: httpx.Client(base_url=live_server, headers={"Authorization": f"Bearer {token}"}, timeout=30)
               for name, token in tokens.items()}
    try:
        for item_id in add_items(ROUNDS):
            def attempt(name, body):
                return lambda: clients[name].post(f"/api/v1/items/{item_id}/decision", json=body)

            responses = race([
                attempt("alice", {"action": "approve", "version": 0}),
                attempt("bob", {"action": "relabel", "label": "black", "version": 0}),
            ])
            codes = sorted(r.status_code for r in responses)
            assert codes == [200, 409], [r.text for r in responses]
            won = next(r for r in responses if r.status_code == 200).json()
            lost = next(r for r in responses if r.status_code == 409).json()
            item, history = item_and_history(engine, item_id)
            assert item.status == won["item"]["status"] == lost["current"]["status"]
            assert [d.reviewer for d in history] == [won["decision"]["reviewer"]]
    finally:
        for client in clients.values():
            client.close()
