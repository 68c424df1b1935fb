"""Hypothesis runs with no per-example deadline: the machine the tests run on is shared and noisy, and a slow
example is not a wrong one."""

from hypothesis import HealthCheck, settings

settings.register_profile("shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-machine")
