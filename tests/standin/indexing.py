"""Indexing on the stand-in, as CuPy indexes: integer index arrays wrap around instead of
raising, boolean masks synchronise, duplicate-index scatters land in another order than
NumPy's last-wins, and ``x[k] += v`` does not copy ``x[k]`` back onto itself. Gathers and
every write are recorded while a stream captures (tests/standin/graphs.py); views are not:
they see whatever their buffer holds."""
from __future__ import annotations

from functools import partial

import numpy as np

from .array import StandInArray, c_order


class Indexing:
    """getitem/setitem of :class:`~standin.device.StandInDevice` (a mixin)."""

    def _index(self, arr: StandInArray, key):
        """key -> (numpy key, fancy, boolean); integer index arrays wrapped around, as CuPy
        does instead of raising IndexError: labels must be checked before they are uploaded."""
        entries = key if isinstance(key, tuple) else (key,)

        def axes_taken(e):
            if e is None or e is Ellipsis:
                return 0
            return e.ndim if isinstance(e, StandInArray) and e.dtype == bool else 1
        free = arr.ndim - sum(axes_taken(e) for e in entries)
        axis, out, fancy, boolean = 0, [], False, False
        for e in entries:
            if isinstance(e, (np.ndarray, list)):
                raise self.discipline("host index", "a host index array (numpy array or list) was used on a "
                                      "device array; CuPy would upload it on every call: build indices "
                                      "on the device with xp.arange")
            taken = free if e is Ellipsis else axes_taken(e)
            if isinstance(e, StandInArray):
                e = self.unwrap(e)
                if e.dtype == bool:
                    boolean = True
                elif e.dtype.kind in "iu" and arr.shape[axis]:
                    e = np.mod(e, arr.shape[axis])
                    fancy = True
            out.append(e)
            axis += taken
        if not any(e is Ellipsis for e in out):
            out.append(Ellipsis)  # a[0] stays a 0-d view, as on CuPy (NumPy returns a scalar copy)
        return tuple(out), fancy, boolean

    def getitem(self, arr: StandInArray, key):
        np_key, fancy, boolean = self._index(arr, key)
        if boolean:
            self.event("syncs", "boolean mask")  # CuPy must learn the count of True values
        result = arr._a[np_key]
        if fancy or boolean:
            result = c_order(result)
            self.work.add("gather", result.nbytes + self._index_bytes(np_key), result.nbytes,
                          launches=self._index_launches(np_key))
            return self.streams.record(partial(self.getitem, arr, key), StandInArray(result, self))
        return StandInArray(result, self)

    @staticmethod
    def _index_bytes(np_key) -> int:
        return sum(e.nbytes for e in np_key if isinstance(e, np.ndarray))

    @staticmethod
    def _index_launches(np_key) -> int:
        """CuPy: one gather/scatter kernel for one index array; with several, a fill and
        one kernel per array first combine them into flat indices."""
        arrays = sum(isinstance(e, np.ndarray) for e in np_key)
        return 1 if arrays <= 1 else 2 + arrays

    def setitem(self, arr: StandInArray, key, value):
        np_key, fancy, boolean = self._index(arr, key)
        np_value = self.unwrap(value)
        if boolean:
            self.event("syncs", "boolean mask")
        read = np_value.nbytes if isinstance(np_value, np.ndarray) else 0
        if fancy or boolean:
            positions = np.arange(arr.size).reshape(arr.shape)[np_key]  # flat target of each write
            if np.unique(positions).size < positions.size:
                # CuPy leaves the order of writes to one element undefined: take another
                # order than NumPy's last-wins, so code relying on it fails the parity tests
                self.counts["duplicate_scatters"] += 1
                values = np.broadcast_to(np_value, positions.shape)
                arr._a.flat[positions.ravel()[::-1]] = values.ravel()[::-1]
            else:
                arr._a[np_key] = np_value
            self.work.add("scatter", read + self._index_bytes(np_key), positions.size * arr.itemsize,
                          launches=self._index_launches(np_key))
            self.streams.record(partial(self.setitem, arr, key, value))
            return
        target = arr._a[np_key]
        if (isinstance(np_value, np.ndarray) and np_value.shape == target.shape
                and np_value.strides == target.strides
                and np_value.__array_interface__["data"][0] == target.__array_interface__["data"][0]):
            return  # x[k] += v writes x[k] back onto itself: CuPy skips that copy
        target[...] = np_value
        self.work.add("copy" if read else "fill", read, target.nbytes)
        self.streams.record(partial(self.setitem, arr, key, value))
