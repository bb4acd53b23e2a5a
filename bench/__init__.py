"""Benchmarks of the injector (``make bench``): engine cost per pod and the HTTPS service.

Kept outside the ``webhook`` package so nothing here ships in the wheel; run it
with ``python -m bench.run`` from the repository root.
"""
