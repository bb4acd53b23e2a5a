"""The real one-node cluster: one node for the whole folder, its files in a fixed order.

A node takes the machine-wide host lock, so two nodes never run at once; the
folder is one unit of work for pytest-xdist (``tests.tiers.unit_of_work``), so a second
worker never waits on the lock for one. The order (``conftest.FILE_ORDER``):
the host-leftover tests before the node starts (they take the lock
themselves), then webhook mode (its Helm canary walk before ``manifests/``
is installed), then policy mode once the webhook install is gone.
"""
