from tasks.formatting import format_answer, format_prompt, normalize, to_base
from tasks.grader import grade


def test_exact_match_and_digit_counts():
    g = grade("753", "753")
    assert g.exact and g.digit_correct == 3 and g.digit_total == 3
    g = grade("754", "753")
    assert not g.exact and g.digit_correct == 2 and g.digit_total == 3


def test_missing_and_extra_digits_are_penalised():
    assert grade("75", "753").digit_total == 3 and grade("75", "753").digit_correct == 2
    g = grade("7531", "753")
    assert not g.exact and g.digit_correct == 3 and g.digit_total == 4
    g = grade("", "753")
    assert not g.exact and g.digit_correct == 0 and g.digit_total == 3


def test_spaced_output_is_normalised_before_grading():
    assert grade(" 7 5 3", "753").exact
    assert normalize(" 7 5\n3 ") == "753"


def test_spaced_format_puts_a_space_before_every_character():
    assert format_prompt("12+34=", "spaced") == "1 2 + 3 4 ="
    assert format_prompt("12+34=", "compact") == "12+34="
    assert format_prompt("12+34=", "spaced") + format_answer("64", "spaced") == "1 2 + 3 4 = 6 4"


def test_to_base():
    assert to_base(0, 8) == "0" and to_base(8, 8) == "10" and to_base(255, 16) == "ff" and to_base(617, 8) == "1151"
