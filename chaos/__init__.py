"""Chaos harnesses: random ``kill -9`` of processes (:mod:`chaos.crash`), network faults across Linux network
namespaces (:mod:`chaos.netns`) and floods with slow and hostile peers (:mod:`chaos.flood`).  Each is a script
that prints its figures and exits non-zero when a property (THREATS 3, 4, 8) does not hold; the ``tests/test_chaos_*``
tests run scaled-down variants."""
