"""
Argument types and the parser class the C{emaild} commands share.
"""

from __future__ import annotations

import argparse
import json


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of the usage dump
        self.exit(2, f"emaild: error: {' '.join(message.split())}\n")


def positive(kind):
    """
    An argument type: a number of C{kind} (int, float) greater than 0.
    """

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
        return value

    return parse


def json_object(text: str) -> dict:
    """
    An argument type: a JSON object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object such as '{\"body\": \"…\"}'")
    return value
