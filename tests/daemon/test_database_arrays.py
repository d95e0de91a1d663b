"""
The array literals batched statements send (emaild.db.arrays): what
PostgreSQL reads back is exactly the Python list, whatever the elements
hold, and anything that is not of the array's type is refused before it
can become part of a literal.
"""

from __future__ import annotations

import math

from twisted.trial import unittest

from emaild.db.arrays import bool_array, float_array, int_array, text_array
from tests.support import DatabaseTestCase

AWKWARD_TEXT = [
    "plain", "", "NULL", "null", " spaced ", 'a "quoted" word', "back\\slash", "\\",
    '\\"', "comma,separated", "{braces}", "}", "{", "'single'", "tab\tand\nnewline",
    "été ☃", "Rob'); DROP TABLE links;--", None,
]


class RoundTripTests(DatabaseTestCase):
    def read_back(self, literal: str, sql_type: str) -> list:
        return self.query(f"SELECT %s::{sql_type}", (literal,))[0][0]

    def test_text_elements_come_back_exactly(self):
        self.assertEqual(self.read_back(text_array(AWKWARD_TEXT), "text[]"), AWKWARD_TEXT)
        for value in AWKWARD_TEXT:  # and each alone
            self.assertEqual(self.read_back(text_array([value]), "text[]"), [value])

    def test_ints_come_back_exactly(self):
        values = [0, 1, -1, 2 ** 63 - 1, -(2 ** 63), 4294967295, True]
        self.assertEqual(self.read_back(int_array(values), "bigint[]"),
                         [0, 1, -1, 2 ** 63 - 1, -(2 ** 63), 4294967295, 1])

    def test_floats_come_back_exactly(self):
        values = [1764643200.123456, 0.1, -2.5, 1e16, 1.5e-9, 3, 0.0]
        self.assertEqual(self.read_back(float_array(values), "float8[]"),
                         [float(v) for v in values])

    def test_none_is_null_in_an_int_array(self):
        self.assertEqual(self.read_back(int_array([1, None, -2]), "bigint[]"), [1, None, -2])

    def test_bools_come_back_exactly(self):
        self.assertEqual(self.read_back(bool_array([True, False, True]), "boolean[]"),
                         [True, False, True])

    def test_empty_lists(self):
        self.assertEqual(self.read_back(int_array([]), "bigint[]"), [])
        self.assertEqual(self.read_back(text_array([]), "text[]"), [])
        self.assertEqual(self.read_back(float_array([]), "float8[]"), [])
        self.assertEqual(self.read_back(bool_array([]), "boolean[]"), [])


class RefusedElementTests(unittest.TestCase):
    def test_only_ints_in_an_int_array(self):
        for bad in ["1", "1},{2", 1.5, b"1"]:
            self.assertRaises(TypeError, int_array, [1, bad])

    def test_only_finite_numbers_in_a_float_array(self):
        for bad in ["1e3", "1}", None]:
            self.assertRaises(TypeError, float_array, [1.0, bad])
        for bad in [math.inf, -math.inf, math.nan]:
            self.assertRaises(ValueError, float_array, [1.0, bad])

    def test_only_str_or_none_in_a_text_array(self):
        for bad in [1, b"bytes", 1.5]:
            self.assertRaises(TypeError, text_array, ["a", bad])

    def test_only_bools_in_a_bool_array(self):
        for bad in [1, 0, "t", None]:
            self.assertRaises(TypeError, bool_array, [True, bad])
