"""Shared inputs of the reliability suite (helpers live in tests/support/faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.faults import write_sign_inputs


@pytest.fixture(scope="session")
def sign_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(images folder, questions file): 4 sign images, 8 questions, 1 line naming a missing image."""
    return write_sign_inputs(tmp_path_factory.mktemp("signs"))
