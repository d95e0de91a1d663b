"""
pytest glue for the trial-style tests.
"""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _work_in_a_temporary_directory(tmp_path_factory):
    # trial's TestCase.mktemp() makes paths relative to the working
    # directory; under pytest that would litter the checkout
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("trial"))
    yield
    os.chdir(here)


@pytest.fixture(autouse=True)
def _reactor_descriptors_stay_consistent():
    # Every test shares one reactor.  A descriptor closed while registered
    # in it (as libpq once did under emaild's database connections) leaves
    # its tables inconsistent: trial's clean-up then fails in every later
    # test, and the next socket given that number is never watched.  Report
    # it against the test that did it, and repair the tables so that one
    # failure stays one failure.
    yield
    from tests.support import repair_reactor

    stale = repair_reactor()
    if stale:
        pytest.fail(f"the reactor was left watching closed descriptors {stale} "
                    "(repaired for the tests after this one)", pytrace=False)
