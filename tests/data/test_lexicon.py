"""The clinical lexicon reads clinicians' words, typos included, and leaves plain words alone."""

from data.lexicon import find_terms


def test_a_four_letter_typo_of_an_organ_is_read_but_a_word_in_its_own_right_is_not():
    assert [m.key for m in find_terms("any livr lesons")] == ["liver tumor"]
    assert find_terms("does the patient live") == []
