"""Tests for thinkrl.judge.arith_expr: equations found and checked in model text, numbers, and the bounds."""

from __future__ import annotations

from fractions import Fraction

from thinkrl.judge.arith_expr import equations_in, normalize_text, parse_number, tokenize


def eqs(text: str):
    return equations_in(tokenize(normalize_text(text)))


def test_equations_are_found_and_checked():
    found = eqs("17 + 28 = 45, so 45 * 3 = 125")
    assert [(e.key, e.result, e.expected, e.ok) for e in found] == [
        ("17+28", 45, 45, True), ("45*3", 125, 135, False)]


def test_numbers_as_written():
    assert parse_number("1,234.5") == Fraction(2469, 2) and parse_number("0.25") == Fraction(1, 4)
    assert parse_number("0900") is None and parse_number("abc") is None  # a clock time or code; no number
    assert parse_number("-3") == -3 and parse_number("9" * 41) is None       # past MAX_DIGITS: unverifiable


def test_huge_powers_are_unverifiable_not_computed():
    (e,) = eqs("9^99999999 = 5")
    assert e.ok is None and e.expected is None
