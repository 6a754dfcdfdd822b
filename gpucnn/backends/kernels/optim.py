"""Multi-tensor optimizer updates (kernels ``optim.sgd_multi`` and ``optim.adam_multi``): every
parameter of a model updated in ONE launch (up to 32 tensors a launch), as PyTorch's
multi_tensor_apply, and their NumPy twins. gpucnn.optim calls :func:`sgd_update` /
:func:`adam_update` when the "optimizer" group is active.

How the kernel finds the arrays. Parameters and state buffers are updated in place and keep
their addresses: a device table holds them (``unsigned long long``), with each tensor's size,
its gradient's layout and a work-item map (tensor, first element) of ``CHUNK`` elements each;
it is uploaded (one small host->device copy: CuPy stages it through pinned memory, no sync)
only when one of those changes (first step, ``Sequential.to()``, ``load_state_dict()``).
Gradients are NEW arrays every step (``x.T @ dy``), at addresses the memory pool picks (on an
H200, lenet's gradient addresses changed at every one of 120 steps), so their addresses go to
the kernel as by-value arguments g0..g31, as torch passes its tensor lists: a step uploads
nothing. Measured there (host time of one step, lenet, batch 64): SGD with momentum 404 ->
117 us, Adam 1102 -> 200 us; lenet-bn 602 -> 139 us and 1824 -> 159 us.

The alternative, every parameter and state buffer a view into one flat buffer, was weighed and
not taken: the gradients would still need a gather copy per tensor (or this very address
passing), and re-pointing ``layer.params`` at views would tie the optimizer to ``to()`` and
``load_state_dict()`` replacing arrays behind it. With addresses nobody changes who owns what.

Addresses: ``a.data.ptr`` on the device (the tests' stand-in gives its host buffer's address),
``a.ctypes.data`` for NumPy arrays. The twins read and write through those addresses
(:func:`_floats`), as the kernel does, so they run on NumPy arrays and under the stand-in alike.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

from ..backend import array_module
from .runtime import launch

CHUNK = 4096  # elements one work item (one block at a time) updates: 16 a thread at 256 threads
BLOCK = 256
MAX_GRID = 65535 * 8  # blocks stride over the work items beyond this
TENSORS_PER_LAUNCH = 32  # gradient addresses g0..g31 of the kernels' signatures


def _address(a) -> int:
    """The address of ``a``'s first element: device pointer, or host pointer for NumPy."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def _floats(address, count) -> np.ndarray:
    """The ``count`` float32 values at ``address`` as a writable NumPy view (the twins' way of
    following a table entry, as the kernel follows a pointer)."""
    return np.ctypeslib.as_array((ctypes.c_float * int(count)).from_address(int(address)))


def grad_layout(g):
    """(d1, d2, d3, s0, s1, s2, s3) the kernel reads gradient ``g`` with: ``g`` as (d0, d1, d2,
    d3) with element strides s0..s3 (C-contiguous: read flat); None when the kernel cannot read
    it (more than 4 axes, negative strides): copy it first."""
    if g.flags.c_contiguous:
        return (1, 1, g.size, 0, 0, 0, 1)
    if g.ndim > 4 or any(stride < 0 or stride % 4 for stride in g.strides):
        return None
    pad = 4 - g.ndim
    dims = (1,) * pad + tuple(g.shape)  # (d0, d1, d2, d3)
    strides = (0,) * pad + tuple(stride // 4 for stride in g.strides)  # in elements
    return (*dims[1:], *strides)


class TensorTable:
    """The device table of one optimizer's multi-tensor launches, kept between steps.

    ``views(xp, columns, layouts)`` takes lists of same-sized float32 C-contiguous arrays (one
    list per kind: params, then state buffers) and the gradients' :func:`grad_layout` s, and
    returns one device uint64 view per column (the arrays' addresses), then ``sizes``,
    ``grad_layout``, ``block_tensor``, ``block_start``, and on the host the index of each
    tensor's first work item (T + 1 entries). Uploaded again only when an address, a size or a
    layout changed; ``uploads`` counts the uploads (tests, profiling)."""

    def __init__(self):
        self._key = None
        self._views = None
        self.uploads = 0

    def views(self, xp, columns, layouts):
        sizes = tuple(a.size for a in columns[0])
        key = (len(columns), tuple(_address(a) for column in columns for a in column), sizes, tuple(layouts))
        if key != self._key:
            self._views = self._upload(xp, key[1], np.asarray(sizes, dtype=np.int64), layouts, len(columns))
            self._key = key
        return self._views

    def _upload(self, xp, addresses, sizes, layouts, n_columns):
        tensors = len(sizes)
        items = (sizes + CHUNK - 1) // CHUNK  # (T,) work items per tensor
        first_item = np.concatenate([[0], np.cumsum(items)])  # (T + 1,)
        block_tensor = np.repeat(np.arange(tensors, dtype=np.int64), items)  # (B,)
        block_start = (np.arange(len(block_tensor), dtype=np.int64) - first_item[block_tensor]) * CHUNK  # (B,)
        layout = np.asarray(layouts, dtype=np.int64).reshape(-1)  # (T * 7,)
        parts = [np.asarray(addresses, dtype=np.uint64), sizes, layout, block_tensor, block_start]
        host = np.concatenate([part.astype(np.uint64) for part in parts])  # (n_columns*T + 8*T + 2*B,)
        table = xp.asarray(host)  # one host->device copy
        self.uploads += 1
        lengths = [tensors] * n_columns + [tensors, 7 * tensors, len(block_tensor), len(block_tensor)]
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        views = [table[int(a):int(b)] for a, b in zip(bounds[:-1], bounds[1:])]  # contiguous views
        return (*views, first_item)


def _readable(xp, grads):
    """The gradients as the kernel can read them (a copy of any it cannot) and their layouts."""
    layouts = [grad_layout(g) for g in grads]
    if None in layouts:
        grads = [g if layout else xp.ascontiguousarray(g) for g, layout in zip(grads, layouts)]
        layouts = [grad_layout(g) for g in grads]
    return grads, layouts


def _launches(kernel, tables, first_item, grads, scalars):
    """One launch per ``TENSORS_PER_LAUNCH`` tensors: tables, this launch's work items and first
    tensor, the scalars, then the gradients' addresses (g0..g31, unused ones 0)."""
    for t0 in range(0, len(grads), TENSORS_PER_LAUNCH):
        t1 = min(t0 + TENSORS_PER_LAUNCH, len(grads))
        begin, end = int(first_item[t0]), int(first_item[t1])
        if end == begin:  # only empty tensors
            continue
        addresses = [np.uint64(_address(g)) for g in grads[t0:t1]]
        addresses += [np.uint64(0)] * (TENSORS_PER_LAUNCH - len(addresses))
        grid = (min(end - begin, MAX_GRID),)
        launch(kernel, grid, (BLOCK,), (*tables, np.int64(begin), np.int64(end), np.int64(t0),
                                        np.int64(CHUNK), *scalars, *addresses))


def sgd_update(table, params, grads, velocities, lr, momentum, weight_decay, nesterov):
    """Every ``params[i]`` -= lr * (its SGD direction), in place, in one launch (gpucnn.optim.SGD's
    formulas). params, velocities (None when momentum is 0): lists of float32 C-contiguous
    arrays; grads: float32 arrays of the params' shapes, any layout (strided ones are read in
    place); ``velocities`` are updated in place. lr, momentum, weight_decay: Python floats (cast
    to float32 once); nesterov: bool. ``table``: this optimizer's :class:`TensorTable`."""
    xp = array_module(params[0])
    grads, layouts = _readable(xp, grads)
    if momentum:
        p, vel, *tables, first_item = table.views(xp, [params, velocities], layouts)
    else:  # the velocity table is never read: any table of the right type will do
        p, *tables, first_item = table.views(xp, [params], layouts)
        vel = p
    _launches("optim.sgd_multi", (p, vel, *tables), first_item, grads,
              (np.float32(lr), np.float32(momentum), np.float32(weight_decay), np.int32(bool(nesterov))))


def _bias_corrections(lr, betas, step) -> tuple[np.float32, np.float32]:
    """(step_size, correction2_sqrt) of Adam's step ``step``: in double on the host, cast once."""
    beta1, beta2 = betas
    return np.float32(lr / (1.0 - beta1 ** step)), np.float32(math.sqrt(1.0 - beta2 ** step))


class BiasCorrections:
    """Adam's bias corrections on the device, for steps replayed from a CUDA graph (whose
    scalars are fixed): ``rows`` (2 * ROWS,) float32 holds (step_size, correction2_sqrt) of steps
    ``first`` .. ``first + ROWS - 1``, the numbers :func:`adam_update` passes as scalars, and
    ``position`` (1,) int64 the row of the next step, which ``optim.advance`` moves after each
    update. Made on the host with Python's float power, so equal to the scalars bit for bit."""

    ROWS = 1024

    def __init__(self):
        self.first = self.settings = self.rows = self.position = None

    def covers(self, step: int) -> bool:
        return self.first is not None and self.first <= step < self.first + self.ROWS

    def ready(self, xp, lr, betas, step):
        """(rows, position) for ``step``: uploaded anew (two small copies) when the table does not
        hold it or ``lr``/``betas`` changed. The caller keeps the device position in step."""
        if not self.covers(step) or self.settings != (lr, betas):
            host = np.array([_bias_corrections(lr, betas, t) for t in range(step, step + self.ROWS)],
                            dtype=np.float32).reshape(-1)  # (2 * ROWS,) step_size, correction2_sqrt per step
            self.rows, self.position = xp.asarray(host), xp.zeros(1, dtype=np.int64)
            self.first, self.settings = step, (lr, betas)
        return self.rows, self.position


def adam_update(table, params, grads, ms, vs, lr, betas, eps, weight_decay, decoupled, steps,
                corrections=None):
    """Every ``params[i]`` takes one Adam (AdamW when ``decoupled``) step in place, in one launch
    (gpucnn.optim.Adam's formulas; ``steps`` counts this step). ms, vs: the moment buffers,
    updated in place; arrays as :func:`sgd_update` takes them. Bias corrections in double on
    the host, cast to float32 once, as the per-tensor code does; with ``corrections`` (a
    :class:`BiasCorrections`) the kernel reads them on the device and one more launch moves
    its position, so a CUDA graph can replay the step."""
    xp = array_module(params[0])
    grads, layouts = _readable(xp, grads)
    *tables, first_item = table.views(xp, [params, ms, vs], layouts)
    beta1, beta2 = betas
    mode = (2 if decoupled else 1) if weight_decay else 0
    fixed = (np.int32(mode), np.float32(weight_decay), np.float32(1.0 - lr * weight_decay),
             np.float32(beta1), np.float32(1.0 - beta1), np.float32(beta2), np.float32(1.0 - beta2))
    if corrections is None:
        step_size, correction2_sqrt = _bias_corrections(lr, betas, steps)
        _launches("optim.adam_multi", tables, first_item, grads,
                  (*fixed, correction2_sqrt, np.float32(eps), step_size))
        return
    rows, position = corrections.ready(xp, lr, betas, steps)
    _launches("optim.adam_multi_table", tables, first_item, grads, (*fixed, rows, position, np.float32(eps)))
    launch("optim.advance", (1,), (1,), (position,))


# -- the NumPy twins: the kernels' work items, one at a time, through the same addresses ---------
def _work_items(params, sizes, grad_layout, block_tensor, block_start, block_begin, block_end,
                first_tensor, chunk, gradients):
    """(tensor t, first element, element count, its weights, its gradient) of each non-empty
    work item in [block_begin, block_end), in order: the weights a view to update in place,
    the gradient read through its layout (``gradients``: the addresses g0..g31)."""
    for b in range(int(block_begin), int(block_end)):
        t, start = int(block_tensor[b]), int(block_start[b])
        count = max(0, min(start + int(chunk), int(sizes[t])) - start)
        if count:
            yield (t, start, count, _at(params[t], start, count),
                   _grad_at(gradients[t - int(first_tensor)], grad_layout[7 * t:7 * t + 7], start, count,
                            int(sizes[t])))


def _at(address, start, count):
    """Elements [start, start + count) of the float32 array at ``address``."""
    return _floats(int(address) + 4 * start, count)


def _grad_at(address, layout, start, count, size):
    """Elements [start, start + count) (C order) of the gradient at ``address``, read through
    its layout (d1, d2, d3, s0, s1, s2, s3)."""
    d1, d2, d3, s0, s1, s2, s3 = (int(x) for x in layout)
    if s3 == 1 and d3 == size:  # C-contiguous
        return _at(address, start, count)
    dims, strides = (size // (d1 * d2 * d3), d1, d2, d3), (s0, s1, s2, s3)
    extent = 1 + sum((d - 1) * s for d, s in zip(dims, strides))  # elements the view spans
    view = np.lib.stride_tricks.as_strided(_floats(address, extent), dims, tuple(4 * s for s in strides))  # (d0, d1, d2, d3)
    return view.reshape(-1)[start:start + count]  # (count,) a copy: only read


def sgd_multi(params, velocity, sizes, grad_layout, block_tensor, block_start, block_begin, block_end,
              first_tensor, chunk, lr, momentum, weight_decay, nesterov,
              g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15,
              g16, g17, g18, g19, g20, g21, g22, g23, g24, g25, g26, g27, g28, g29, g30, g31):
    """Twin of ``optim.sgd_multi``: the per-tensor SGD array code of gpucnn.optim on each work
    item, float32 operations in the same order (so equal to both bit for bit)."""
    gradients = (g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15,
                 g16, g17, g18, g19, g20, g21, g22, g23, g24, g25, g26, g27, g28, g29, g30, g31)
    for t, start, count, w, g in _work_items(params, sizes, grad_layout, block_tensor, block_start,
                                             block_begin, block_end, first_tensor, chunk, gradients):
        if weight_decay != 0:
            g = g + weight_decay * w  # a new array: the gradient is only read
        if momentum != 0:
            v = _at(velocity[t], start, count)
            v *= momentum
            v += g
            g = g + momentum * v if nesterov else v
        w -= lr * g


def adam_multi(params, m, v, sizes, grad_layout, block_tensor, block_start, block_begin, block_end,
               first_tensor, chunk, decay_mode, weight_decay, decay_factor, beta1, one_minus_beta1,
               beta2, one_minus_beta2, correction2_sqrt, eps, step_size,
               g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15,
              g16, g17, g18, g19, g20, g21, g22, g23, g24, g25, g26, g27, g28, g29, g30, g31):
    """Twin of ``optim.adam_multi``: gpucnn.optim.Adam's per-tensor array code on each work
    item, float32 operations in the same order (so equal to both bit for bit)."""
    gradients = (g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15,
                 g16, g17, g18, g19, g20, g21, g22, g23, g24, g25, g26, g27, g28, g29, g30, g31)
    for t, start, count, w, g in _work_items(params, sizes, grad_layout, block_tensor, block_start,
                                             block_begin, block_end, first_tensor, chunk, gradients):
        mt, vt = _at(m[t], start, count), _at(v[t], start, count)
        if decay_mode == 2:
            w *= decay_factor
        elif decay_mode == 1:
            g = g + weight_decay * w  # a new array: the gradient is only read
        mt *= beta1
        mt += one_minus_beta1 * g
        scratch = g * g
        scratch *= one_minus_beta2
        vt *= beta2
        vt += scratch
        np.sqrt(vt, out=scratch)
        scratch /= correction2_sqrt
        scratch += eps
        np.divide(mt, scratch, out=scratch)
        scratch *= step_size
        w -= scratch


def adam_multi_table(params, m, v, sizes, grad_layout, block_tensor, block_start, block_begin, block_end,
                     first_tensor, chunk, decay_mode, weight_decay, decay_factor, beta1, one_minus_beta1,
                     beta2, one_minus_beta2, corrections, position, eps,
                     g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15,
                     g16, g17, g18, g19, g20, g21, g22, g23, g24, g25, g26, g27, g28, g29, g30, g31):
    """Twin of ``optim.adam_multi_table``: :func:`adam_multi` with the corrections of row
    ``position[0]`` of ``corrections``."""
    p = int(position[0])
    adam_multi(params, m, v, sizes, grad_layout, block_tensor, block_start, block_begin, block_end,
               first_tensor, chunk, decay_mode, weight_decay, decay_factor, beta1, one_minus_beta1,
               beta2, one_minus_beta2, corrections[2 * p + 1], eps, corrections[2 * p],
               g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15,
               g16, g17, g18, g19, g20, g21, g22, g23, g24, g25, g26, g27, g28, g29, g30, g31)


def advance(position):
    """Twin of ``optim.advance``: the next step's row."""
    position[0] += 1
