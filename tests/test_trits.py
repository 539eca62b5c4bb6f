import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from golden import trits

trit_arrays = hnp.arrays(np.int8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                         elements=st.integers(-1, 1))


def test_codes_are_twos_complement():
    assert trits.encode([0, 1, -1]).tolist() == [0b00, 0b01, 0b11]
    assert trits.CODE_INVALID == 0b10


@given(trit_arrays)
def test_encode_decode_round_trip(t):
    np.testing.assert_array_equal(trits.decode(trits.encode(t)), t)


@given(trit_arrays, st.integers(1, 40))
def test_word_round_trip(t, per_word):
    words = trits.pack_words(t, per_word)
    back = trits.unpack_words(words, per_word, count=t.shape[-1])
    np.testing.assert_array_equal(back, t)


def test_word_layout_trit_zero_in_low_bits():
    assert trits.pack_words([1, -1, 0, 1], 4) == [0b01_00_11_01]
    assert trits.pack_words([-1, 1], 3) == [0b00_01_11]      # padded with a zero trit


@given(hnp.arrays(np.int8, st.integers(0, 60), elements=st.integers(-1, 1)))
def test_base3_round_trip(t):
    data = trits.pack_base3(t)
    assert len(data) == -(-t.size // 5)
    np.testing.assert_array_equal(trits.unpack_base3(data, t.size), t)


def test_base3_layout_first_trit_least_significant():
    # digits t+1 = (2, 0, 1, 1, 1) -> 2 + 0*3 + 1*9 + 1*27 + 1*81
    assert trits.pack_base3([1, -1, 0, 0, 0]) == bytes([2 + 9 + 27 + 81])


def test_bad_trit_value_names_position():
    with pytest.raises(trits.TritError, match=r"trits\[1, 2\] = 2 is not a trit"):
        trits.encode(np.array([[0, 0, 0], [1, -1, 2]]))


def test_invalid_code_names_position():
    with pytest.raises(trits.TritError, match=r"codes\[3\] = 0b10 is not a trit code"):
        trits.decode([0, 1, 3, 2])


def test_invalid_code_in_word_names_word_and_lane():
    words = trits.pack_words([[1, 0], [0, 1]], 2)
    words[1][0] = (words[1][0] & ~(0b11 << 2)) | (0b10 << 2)     # lane 1 of word 1
    with pytest.raises(trits.TritError, match=r"word\[1, 0, 1\] = 0b10 is not a trit code"):
        trits.unpack_words(words, 2)


def test_bad_base3_byte_names_position():
    with pytest.raises(trits.TritError, match="base-3 byte 1 = 243 is above 242"):
        trits.unpack_base3(bytes([0, 243]), 10)


def test_short_base3_data_is_an_error():
    with pytest.raises(trits.TritError, match="holds 1 bytes, 6 trits need 2"):
        trits.unpack_base3(bytes([121]), 6)
