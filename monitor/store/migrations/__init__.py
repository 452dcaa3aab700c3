"""Alembic migrations of the whole database (store, rollout, workers, outbox).

Run them with `monitor db upgrade` (see :mod:`monitor.store.schema`); a brand-new empty
database is brought to the newest revision automatically on first use.

Adding a change to a table model (a column, an index, a new table) needs a revision
here too, or the test ``tests/scaleout/test_migrations.py`` fails (it compares the
migrated schema with the models). Write one with autogenerate against a database at
the current head, then read and tidy it::

    .venv/bin/python -m monitor.store.schema revision "add review_items.ood"

Revisions are plain and unconditional, except ``0001`` which adopts databases made
before migrations existed.
"""
