"""
What a bad configuration is reported as.
"""

from __future__ import annotations


class ConfigError(Exception):
    """
    The configuration is unusable; the message names the key and the problem.
    """

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem
