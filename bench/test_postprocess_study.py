"""bench/postprocess_study.py reads the source and id of a saved map from its file name."""
import pytest

from postprocess_study import split_stem

SETS = ["ph2", "kvasir", "kvasir_seg", "cvc_clinicdb", "ddti"]


@pytest.mark.parametrize("stem, expected", [
    ("kvasir_seg_cju0qkwl35piu0993l0dewei2", ("kvasir_seg", "cju0qkwl35piu0993l0dewei2")),
    ("kvasir_abc", ("kvasir", "abc")),                  # the shorter name where it fits
    ("cvc_clinicdb_431", ("cvc_clinicdb", "431")),
    ("ddti_378_1_2", ("ddti", "378_1_2")),              # an id with underscores stays whole
])
def test_split_stem_takes_the_longest_set_name(stem, expected):
    assert split_stem(stem, SETS) == expected


def test_split_stem_names_the_sets_when_none_fits():
    with pytest.raises(ValueError, match="busi_1.*data set name"):
        split_stem("busi_1", SETS)
