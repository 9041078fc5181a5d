"""What several test files share: one Ray head of the test session's own (tests.processes.LocalRay), for the
tests whose drivers are subprocesses (each would otherwise start a Ray of its own)."""

import pytest


@pytest.fixture(scope="session")
def ray_head():
    from tests.processes import LocalRay

    head = LocalRay(cpus=2)
    yield head
    head.stop()
