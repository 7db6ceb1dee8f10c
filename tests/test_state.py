"""State store: growth, eviction, snapshot round-trip."""

import numpy as np
import pytest
import torch

from streamrnn.detector.state import FieldSpec, StateStore

FIELDS = {
    "h": FieldSpec((2, 3), torch.float32),
    "n": FieldSpec((), torch.int64, init=-1.0),
}


def test_grows_by_doubling_and_keeps_rows() -> None:
    store = StateStore(FIELDS, max_keys=100, initial_capacity=2)
    rows = store.rows(["a", "b"])
    store.tensors["h"][torch.as_tensor(rows)] = torch.tensor([1.0, 2.0]).view(2, 1, 1)
    store.rows([f"k{i}" for i in range(5)])
    assert store.capacity == 8
    assert store.tensors["h"][store.key_to_row["a"]].eq(1.0).all()
    assert store.tensors["h"][store.key_to_row["b"]].eq(2.0).all()
    assert int(store.tensors["n"][store.key_to_row["k4"]]) == -1  # fresh rows start at init


def test_repeated_keys_share_a_row() -> None:
    store = StateStore(FIELDS, max_keys=10)
    assert store.rows(["x", "y", "x"]).tolist() == [0, 1, 0]
    assert len(store) == 2


def test_eviction_takes_least_recently_seen_and_counts() -> None:
    store = StateStore(FIELDS, max_keys=3, initial_capacity=1)
    store.rows(["a"])
    store.rows(["b"])
    store.rows(["c"])
    store.rows(["a"])  # a is fresh again; b is now the least recently seen
    store.rows(["d"])
    assert sorted(store.keys()) == ["a", "c", "d"]
    assert store.evicted_total == 1
    # a row reused for a new key starts from init, not from the evicted key's state
    assert int(store.tensors["n"][store.key_to_row["d"]]) == -1
    assert store.capacity == 3


def test_eviction_never_takes_keys_of_the_current_batch() -> None:
    store = StateStore(FIELDS, max_keys=2)
    store.rows(["a", "b"])
    rows = store.rows(["a", "c"])
    assert "a" in store and "c" in store and "b" not in store
    assert rows[0] == store.key_to_row["a"]


def test_batch_with_more_keys_than_cap_is_an_error() -> None:
    store = StateStore(FIELDS, max_keys=2)
    with pytest.raises(ValueError, match="max_keys"):
        store.rows(["a", "b", "c"])


def test_snapshot_round_trips_exactly() -> None:
    store = StateStore(FIELDS, max_keys=10)
    rows = torch.as_tensor(store.rows(["a", "b", "c"]))
    store.tensors["h"][rows] = torch.randn(3, 2, 3)
    store.tensors["n"][rows] = torch.tensor([5, 6, 7])
    blob = store.snapshot(extra={"offsets": {"t-0": 42}})
    other = StateStore(FIELDS, max_keys=10)
    other.rows(["z"])  # a key that is not in the snapshot stays
    extra = other.restore(blob)
    assert extra == {"offsets": {"t-0": 42}}
    for k in ("a", "b", "c"):
        for name in FIELDS:
            assert torch.equal(
                other.tensors[name][other.key_to_row[k]], store.tensors[name][store.key_to_row[k]]
            )
    assert "z" in other


def test_snapshot_of_a_subset_and_drop() -> None:
    store = StateStore(FIELDS, max_keys=10)
    store.rows(["a", "b", "c"])
    blob = store.snapshot(["a", "c", "missing"])
    assert store.drop(["a", "c"]) == 2
    assert store.keys() == ["b"]
    store.restore(blob)
    assert sorted(store.keys()) == ["a", "b", "c"]


def test_restore_rejects_other_layout() -> None:
    store = StateStore(FIELDS, max_keys=10)
    store.rows(["a"])
    other = StateStore(
        {"h": FieldSpec((2, 4), torch.float32), "n": FieldSpec((), torch.int64)}, max_keys=10
    )
    with pytest.raises(ValueError, match="snapshot field h must have rows of shape"):
        other.restore(store.snapshot())


def test_row_bytes() -> None:
    store = StateStore(FIELDS, max_keys=10, initial_capacity=4)
    assert store.row_nbytes == 2 * 3 * 4 + 8
    assert store.nbytes == 4 * store.row_nbytes
    assert np.array_equal(store.rows(["q"]), [0])
