import numpy as np
from amaranth import signed
from amaranth.lib import data
from hypothesis import given
from hypothesis import strategies as st

from hw.words import pack_ints, unpack_ints


@given(st.integers(2, 24), st.data())
def test_pack_matches_amaranth_array_layout(bits, draw):
    count = draw.draw(st.integers(1, 6))
    values = draw.draw(st.lists(st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1),
                                min_size=count, max_size=count))
    layout = data.ArrayLayout(signed(bits), count)
    assert pack_ints(values, bits) == layout.const(values).as_value().value
    np.testing.assert_array_equal(unpack_ints([pack_ints(values, bits)], bits, count)[0],
                                  values)


def test_out_of_range_value_is_an_error():
    import pytest
    with pytest.raises(ValueError, match=r"values must be in \[-128, 127\] for 8-bit elements"):
        pack_ints([128], 8)
