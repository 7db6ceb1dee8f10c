"""Per-key state resident on the device.

One row per key: rows are allocated from a free list, capacity grows by doubling (no per-key
allocation), and when the number of resident keys would exceed ``max_keys`` the least recently
seen keys that the current batch does not touch are evicted and counted. ``snapshot()`` turns any
subset of keys into bytes and ``restore()`` puts them back exactly.

Layout: the fields are packed side by side into one 2-D *bank* per element size (all 4-byte fields
in one ``(capacity, width)`` tensor, all 8-byte fields in another), so reading or writing every
field of a set of rows is one gather or one scatter per bank (:attr:`StateStore.banks`,
:meth:`StateStore.field_slice`). ``tensors[name]`` is a view of its columns with the field's own
shape and dtype, ``(capacity, *shape)``; writing into it writes into the bank.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class FieldSpec:
    """One per-key field: its shape per row, dtype and the value a fresh row starts with.

    ``init`` is one value for the whole row, or a tuple of one value per index of the row's
    first dimension.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    init: float | tuple[float, ...] = 0.0

    def init_row(self) -> Tensor:
        if isinstance(self.init, tuple):
            if not self.shape or len(self.init) != self.shape[0]:
                raise ValueError(
                    f"init must have {self.shape[0] if self.shape else 0} values, got {self.init}"
                )
            vals = torch.tensor(self.init, dtype=self.dtype)  # (shape[0],)
            return vals.view(-1, *([1] * (len(self.shape) - 1))).expand(self.shape).clone()
        return torch.full(self.shape, self.init, dtype=self.dtype)


def _bank_dtype(itemsize: int) -> torch.dtype:
    return {1: torch.uint8, 2: torch.int16, 4: torch.float32, 8: torch.int64}[itemsize]


class StateStore:
    """Rows of per-key state on one device, with a key → row map and LRU eviction.

    >>> store = StateStore({"h": FieldSpec((2,), torch.float32)}, max_keys=2, initial_capacity=1)
    >>> store.rows(["a", "b"]).tolist()
    [0, 1]
    >>> store.rows(["c"]).tolist()  # "a" is the least recently seen: evicted, its row reused
    [0]
    >>> store.evicted_total, len(store)
    (1, 2)
    """

    def __init__(
        self,
        fields: dict[str, FieldSpec],
        *,
        max_keys: int,
        initial_capacity: int = 1024,
        device: torch.device | str = "cpu",
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.specs = dict(fields)
        self.max_keys = max_keys
        self.device = torch.device(device)
        self.capacity = max(1, min(initial_capacity, max_keys))
        # name -> (bank, first column, last column + 1); banks by element size, in spec order.
        self._slices: dict[str, tuple[int, int, int]] = {}
        sizes: list[int] = []
        widths: list[int] = []
        for name, spec in self.specs.items():
            size = torch.empty((), dtype=spec.dtype).element_size()
            if size not in sizes:
                sizes.append(size)
                widths.append(0)
            b = sizes.index(size)
            n = int(np.prod(spec.shape, dtype=np.int64))
            self._slices[name] = (b, widths[b], widths[b] + n)
            widths[b] += n
        self._bank_dtypes = [_bank_dtype(size) for size in sizes]
        self._widths = widths
        # One fresh row per bank, as the banks' own dtype (fields of other dtypes as their bits).
        self._init_rows = [
            torch.empty(w, dtype=dt) for w, dt in zip(widths, self._bank_dtypes, strict=True)
        ]
        for name, spec in self.specs.items():
            b, lo, hi = self._slices[name]
            self._init_rows[b][lo:hi].view(spec.dtype).copy_(spec.init_row().reshape(-1))
        self._init_rows = [r.to(self.device) for r in self._init_rows]
        self.banks: list[Tensor] = [self._fresh_bank(b, self.capacity) for b in range(len(widths))]
        self.tensors: dict[str, Tensor] = self._views()
        self.key_to_row: dict[str, int] = {}
        self.row_keys: list[str | None] = [None] * self.capacity
        self.free: list[int] = list(range(self.capacity - 1, -1, -1))  # pop() gives row 0 first
        self.last_seen = np.zeros(self.capacity, dtype=np.int64)  # host-side LRU clock per row
        self.clock = 0
        self.evicted_total = 0

    def _fresh_bank(self, b: int, n: int) -> Tensor:
        return self._init_rows[b].unsqueeze(0).expand(n, -1).clone()  # (n, width)

    def _views(self) -> dict[str, Tensor]:
        out = {}
        for name, spec in self.specs.items():
            b, lo, hi = self._slices[name]
            cols = self.banks[b][:, lo:hi].view(spec.dtype)  # (capacity, numel)
            out[name] = cols.view(self.capacity, *spec.shape)
        return out

    def field_slice(self, name: str) -> tuple[int, int, int]:
        """Where a field lives: ``(bank index, first column, last column + 1)`` of :attr:`banks`."""
        return self._slices[name]

    def __len__(self) -> int:
        return len(self.key_to_row)

    def __contains__(self, key: object) -> bool:
        return key in self.key_to_row

    def keys(self) -> list[str]:
        return list(self.key_to_row)

    @property
    def nbytes(self) -> int:
        """Bytes of the device tensors (allocated capacity, not just resident keys)."""
        return sum(t.numel() * t.element_size() for t in self.banks)

    @property
    def row_nbytes(self) -> int:
        """Bytes one key occupies across all fields."""
        return sum(
            int(np.prod(s.shape, dtype=np.int64)) * torch.empty((), dtype=s.dtype).element_size()
            for s in self.specs.values()
        )

    def _grow(self, needed: int) -> None:
        new_cap = self.capacity
        while new_cap < needed:
            new_cap *= 2
        new_cap = min(new_cap, self.max_keys)
        if new_cap <= self.capacity:
            return
        for b, old in enumerate(self.banks):
            t = self._fresh_bank(b, new_cap)
            t[: self.capacity] = old
            self.banks[b] = t
        self.row_keys.extend([None] * (new_cap - self.capacity))
        self.free = list(range(new_cap - 1, self.capacity - 1, -1)) + self.free
        self.last_seen = np.concatenate(
            [self.last_seen, np.zeros(new_cap - self.capacity, dtype=np.int64)]
        )
        log.debug("state capacity %d -> %d rows", self.capacity, new_cap)
        self.capacity = new_cap
        self.tensors = self._views()

    def _evict(self, n: int, protected: set[int]) -> None:
        live = np.fromiter(self.key_to_row.values(), dtype=np.int64, count=len(self.key_to_row))
        if protected:
            live = live[~np.isin(live, np.fromiter(protected, dtype=np.int64))]
        if len(live) < n:
            raise ValueError(
                f"a batch touches more distinct keys than state.max_keys allows ({self.max_keys})"
            )
        order = (
            np.argpartition(self.last_seen[live], n - 1)[:n]
            if n < len(live)
            else np.arange(len(live))
        )
        victims = live[order]
        for row in victims.tolist():
            key = self.row_keys[row]
            assert key is not None
            del self.key_to_row[key]
            self.row_keys[row] = None
            self.free.append(row)
        self.evicted_total += len(victims)
        log.debug("evicted %d idle keys", len(victims))

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Rows for ``keys`` (one per entry, repeats allowed); new keys get fresh rows.

        Marks every key as just seen. Output: (N,) int64.
        """
        self.clock += 1
        n = len(keys)
        rows = np.fromiter(map(self.key_to_row.get, keys, repeat(-1, n)), dtype=np.int64, count=n)
        missing = np.nonzero(rows < 0)[0]
        if len(missing):
            new_keys = list(dict.fromkeys(keys[i] for i in missing.tolist()))
            self._allocate(new_keys, protected=set(rows[rows >= 0].tolist()))
            rows[missing] = [self.key_to_row[keys[i]] for i in missing.tolist()]
        self.last_seen[rows] = self.clock
        return rows

    def _allocate(self, new_keys: list[str], protected: set[int]) -> None:
        need = len(self.key_to_row) + len(new_keys)
        if need > self.capacity:
            self._grow(need)
        over = len(self.key_to_row) + len(new_keys) - self.max_keys
        if over > 0:
            self._evict(over, protected)
        fresh = [self.free.pop() for _ in new_keys]
        for key, row in zip(new_keys, fresh, strict=True):
            self.key_to_row[key] = row
            self.row_keys[row] = key
        self.reset_rows(np.asarray(fresh, dtype=np.int64))

    def reset_rows(self, rows: np.ndarray) -> None:
        idx = torch.as_tensor(rows, device=self.device)
        for bank, row in zip(self.banks, self._init_rows, strict=True):
            bank[idx] = row

    def drop(self, keys: Iterable[str]) -> int:
        """Forget keys (a revoked partition's, say). Returns how many were resident."""
        n = 0
        for key in keys:
            row = self.key_to_row.pop(key, None)
            if row is None:
                continue
            self.row_keys[row] = None
            self.free.append(row)
            n += 1
        return n

    def snapshot(self, keys: Iterable[str] | None = None, extra: dict | None = None) -> bytes:
        """Bytes holding the given keys' rows (all resident keys by default) and ``extra``."""
        chosen = (
            list(self.key_to_row) if keys is None else [k for k in keys if k in self.key_to_row]
        )
        idx = torch.as_tensor(
            [self.key_to_row[k] for k in chosen], dtype=torch.int64, device=self.device
        )
        payload = {
            "format": SNAPSHOT_FORMAT,
            "keys": chosen,
            "fields": {name: t[idx].cpu() for name, t in self.tensors.items()},
            "extra": extra or {},
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    def restore(self, data: bytes, required: Iterable[str] | None = None) -> dict:
        """Load a snapshot's keys (replacing those keys' rows); returns the snapshot's ``extra``.

        With ``required`` (field names), a snapshot of an older layout restores too: the fields it
        holds with the current shape are loaded, the others start fresh (logged), and only a
        required field that is missing or changed is an error. Without it, every field must match.
        """
        payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        if payload.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(
                f"snapshot format must be {SNAPSHOT_FORMAT}, got {payload.get('format')!r}"
            )
        keys: list[str] = payload["keys"]
        fields: dict[str, Tensor] = payload["fields"]
        strict = required is None
        if strict and set(fields) != set(self.specs):
            raise ValueError(f"snapshot fields must be {sorted(self.specs)}, got {sorted(fields)}")
        loaded, fresh = [], []
        for name, spec in self.specs.items():
            t = fields.get(name)
            ok = t is not None and tuple(t.shape[1:]) == spec.shape and t.dtype == spec.dtype
            if ok:
                loaded.append(name)
                continue
            if strict or name in (required or ()):
                got = "missing" if t is None else f"{tuple(t.shape[1:])} {t.dtype}"
                raise ValueError(
                    f"snapshot field {name} must have rows of shape {spec.shape} and dtype {spec.dtype}, "
                    f"got {got}"
                )
            fresh.append(name)
        if fresh and keys:
            log.warning(
                "snapshot of an older state layout: %s start fresh for its %d key(s)",
                ", ".join(fresh),
                len(keys),
            )
        if keys:
            rows_np = self.rows(keys)
            if fresh:
                self.reset_rows(rows_np)
            rows = torch.as_tensor(rows_np, device=self.device)
            for name in loaded:
                self.tensors[name][rows] = fields[name].to(self.device)
        return payload.get("extra", {})
