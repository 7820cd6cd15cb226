"""Hypothesis profiles for the property-based suites in tests/fuzz.

`ci` (the default) runs a fixed, bounded set of examples: derandomized, so every run of the
same code tests the same inputs and a failure reproduces; no example database, so a run
writes nothing into the tree; no deadline, since a shared two-core machine makes timings
noisy. `deep` (HYPOTHESIS_PROFILE=deep) searches much longer with fresh random inputs, for a
developer hunting bugs by hand.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=5000,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
