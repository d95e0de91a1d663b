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
