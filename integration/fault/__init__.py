"""The randomized fault suite: a seeded nemesis against a ledger workload, and a checker.

See README.md. Imported as ``fault`` with ``integration/`` on ``sys.path`` (pytest
puts it there; the role processes get it on ``PYTHONPATH``; the runner,
``python -m integration.fault``, adds it).
"""
