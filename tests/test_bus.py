"""The bus's envelopes, decoded alone (gchat/cluster/bus.py): no Redis."""

from __future__ import annotations

import pytest

from gchat.cluster.bus import LocalBus, dispatch


def test_a_batch_envelope_hands_on_each_delivery_in_order() -> None:
    got: list[tuple[list[int], bytes]] = []
    dispatch(b'MD1,2 7,1 {"msg":"a b"}\nD3 7,2 {"msg":"c"}\nD1 8,5 {}', lambda u, b: got.append((u, b)),
             lambda g: pytest.fail("not an invalidation"))
    assert got == [([1, 2], b'7,1 {"msg":"a b"}'), ([3], b'7,2 {"msg":"c"}'), ([1], b"8,5 {}")]


def test_an_unknown_envelope_inside_a_batch_is_refused() -> None:
    with pytest.raises(ValueError):
        dispatch(b"MD1 7,1 {}\nX", lambda u, b: None, lambda g: None)


def test_a_lone_node_reaches_nobody_elsewhere() -> None:
    assert LocalBus().route_batch([([1, 2], b"7,1 {}"), ([3], b"7,2 {}")]) == [[1, 2], [3]]
