"""The default IVF list count: 2 sqrt(n) up to 1M rows, then lists of at most 500 rows, capped."""

from poolsieve.filters.knn.lists import MAX_DEFAULT_NLIST, ROWS_PER_LIST, default_nlist


def test_two_sqrt_n_up_to_a_million_rows():
    assert [default_nlist(n) for n in (100, 50_000, 1_000_000)] == [20, 447, 2000]


def test_lists_stay_short_beyond_a_million_rows():
    for n in (2_000_000, 4_000_000, 12_800_000):
        nlist = default_nlist(n)
        assert n / nlist <= ROWS_PER_LIST
        assert nlist > 2 * n**0.5
    assert default_nlist(128_000_000) == MAX_DEFAULT_NLIST
