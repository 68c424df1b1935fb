"""Settings for a shared, noisy 2-core machine: Hypothesis runs with no per-example deadline (a slow example is
not a wrong one), and the tiny torch models of the fine-tune tests run on one thread."""

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-machine")


@pytest.fixture
def one_thread():
    """Two threads on a shared 2-core machine run the tiny models ten times slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
