"""The packed sparse layout that the sparse encoder uses everywhere.

Features of the N active sites of a batch are a dense ``[N, C]`` matrix, rows sample-major, then
raster order (h, then w) inside a sample. One :class:`SparseLayout` per stage resolution says
where each row lives and how to find a site's row:

* ``row_pos``  ``[N]`` int32, flat position ``b*H*W + h*W + w`` of every row;
* ``inv_map``  ``[B, H, W]`` int32, the row of each site, or -1 when the site is masked;
* ``offsets``  ``[B + 1]`` int32, rows of sample b are ``offsets[b]:offsets[b+1]``.

:func:`build_layout` makes one from the FCMAE patch mask ``[B, gh, gw]`` (1 = masked); every kept
patch becomes an aligned ``b x b`` block at the stage resolution (b = H / gh). When the number of
kept patches per sample is given (FCMAE always keeps ``int(L * (1 - ratio))``), N is known from
shapes alone and the builder never synchronises with the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from . import args
from .host_sync import sync_point
from .masking import check_kept


@dataclass(frozen=True)
class SparseLayout:
    """Where the packed rows of one stage live. Build it with :func:`build_layout`.

    A layout made by hand from tensors is checked when it is made: shapes, dtypes and devices, and its
    values (every row a site of the batch, ``inv_map`` its inverse and -1 elsewhere, ``offsets`` the
    sample boundaries of the rows); on a GPU that check reads the tensors once (a host sync). The
    builders skip the value check (``trusted=True``): their layouts are right by construction.
    The kernels never read outside their tensors whatever a layout holds: on CPU tensors they refuse an
    inconsistent one, on CUDA they treat out-of-range entries as inactive sites.
    """

    batch_size: int
    height: int
    width: int
    row_pos: torch.Tensor  # [N] int32
    inv_map: torch.Tensor  # [B, H, W] int32, -1 = inactive
    offsets: torch.Tensor  # [B + 1] int32
    rows_per_sample: int | None = None  # set when every sample has the same number of rows
    trusted: bool = field(default=False, repr=False, compare=False)
    # b when every active site lies in a fully active, aligned b x b block (build_layout: b = H / gh), the
    # structure the patch-tiled depthwise conv exploits; None = unknown (any active set)
    block: int | None = None

    def __post_init__(self):
        _check_structure(self)
        if not self.trusted and not torch.compiler.is_compiling():
            with sync_point("a hand-made SparseLayout is checked once, when it is made"):
                _check_values(self)

    @property
    def num_rows(self) -> int:
        return self.row_pos.shape[0]

    @property
    def device(self) -> torch.device:
        return self.row_pos.device

    def active(self) -> torch.Tensor:
        """``[B, H, W]`` bool, True at active (kept) sites."""
        return self.inv_map >= 0

    @property
    def patch_table(self) -> PatchTable:
        """The per-patch table of a layout made of whole blocks (``block`` set), built once per layout and shared
        by every op that uses it (the patch-tiled depthwise conv, forward and backward, of every block of the
        stage): see :class:`PatchTable`. Under torch.compile it is rebuilt in the graph instead of cached (the
        compiler sees the ops and removes the repeats)."""
        if self.block is None:
            raise ValueError("patch_table needs a layout made of whole aligned blocks (block set, as build_layout "
                             "makes it); this layout has block=None")
        if torch.compiler.is_compiling():
            return _patch_table(self)
        table = self.__dict__.get("_patch_table")
        if table is None:
            table = _patch_table(self)
            object.__setattr__(self, "_patch_table", table)  # a cache, not state: the dataclass stays frozen
        return table

    def __repr__(self) -> str:  # tensors would flood the repr
        return (f"SparseLayout(B={self.batch_size}, H={self.height}, W={self.width}, rows={self.num_rows}, "
                f"rows_per_sample={self.rows_per_sample}, device={self.device})")


# Table padding in patches: enough for the largest kernel the ops take (15x15: a halo of 7 px)
_HALO = 7


class PatchTable(NamedTuple):
    """Where the rows of whole b x b blocks are, per patch: with rows in raster order inside a sample, pixel
    (i, j) of a kept patch is row ``row0 + i * stride + j``.

    * ``row0``    ``[B, gh + 2P, gw + 2P]`` int32: row of each patch's top-left pixel, -1 for masked patches
      and for the P = ceil(7 / b) patches of padding around the grid (so a 15x15 halo never needs a bound test);
    * ``stride``  ``[B, gh + 2P]`` int32: rows between two image lines of a patch row (b x its kept patches);
    * ``patches`` ``[N / b^2]`` int32: the kept patches (flat ``b * gh * gw + ph * gw + pw``) in row order;
    * ``pad``     P.
    Built with static shapes from ``inv_map`` (no host sync)."""

    row0: torch.Tensor
    stride: torch.Tensor
    patches: torch.Tensor
    pad: int


def _patch_table(lay: SparseLayout) -> PatchTable:
    b = lay.block
    B, H, W = lay.inv_map.shape
    gh, gw = H // b, W // b
    P = -(-_HALO // b)
    top_left = lay.inv_map[:, ::b, ::b]                                        # [B, gh, gw]: row or -1
    kept = top_left >= 0
    row0 = torch.full((B, gh + 2 * P, gw + 2 * P), -1, dtype=torch.int32, device=lay.device)
    row0[:, P:P + gh, P:P + gw] = top_left
    stride = torch.zeros((B, gh + 2 * P), dtype=torch.int32, device=lay.device)
    stride[:, P:P + gh] = kept.sum(-1, dtype=torch.int32) * b
    # kept slots first, in slot order = the row order of their top-left pixels; N / b^2 from shapes alone
    patches = torch.argsort((~kept).reshape(-1).to(torch.int8), stable=True)[:lay.num_rows // (b * b)]
    return PatchTable(row0, stride, patches.to(torch.int32), P)


def _check_structure(lay: SparseLayout) -> None:
    """Types, shapes, dtypes, devices: no tensor values read (no sync)."""
    for name in ("batch_size", "height", "width"):
        v = getattr(lay, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"SparseLayout.{name} must be an int >= 0, got {v!r}")
    want = {"row_pos": 1, "inv_map": 3, "offsets": 1}
    for name, dim in want.items():
        t = getattr(lay, name)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != dim:
            raise ValueError(f"SparseLayout.{name} must be a {dim}-D int32 tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
                             f"{' ' + str(t.dtype) if isinstance(t, torch.Tensor) else ''}")
        if t.device != lay.row_pos.device:
            raise ValueError(f"SparseLayout.{name} is on {t.device} but row_pos is on {lay.row_pos.device}")
    B, H, W = lay.batch_size, lay.height, lay.width
    if tuple(lay.inv_map.shape) != (B, H, W):
        raise ValueError(f"SparseLayout.inv_map must be [B, H, W] = {[B, H, W]}, got {list(lay.inv_map.shape)}")
    if lay.offsets.shape[0] != B + 1:
        raise ValueError(f"SparseLayout.offsets must have B + 1 = {B + 1} entries, got {lay.offsets.shape[0]}")
    if B * H * W >= 2**31:
        raise ValueError(f"B*H*W = {B * H * W} does not fit the int32 positions of the layout")
    b = lay.block
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1 or H % b or W % b):
        raise ValueError(f"SparseLayout.block = {b!r} must be an int >= 1 dividing H = {H} and W = {W}")
    R = lay.rows_per_sample
    if R is not None and (isinstance(R, bool) or not isinstance(R, int) or R < 0 or R * B != lay.row_pos.shape[0]):
        raise ValueError(f"SparseLayout.rows_per_sample = {R!r} but there are {lay.row_pos.shape[0]} rows for "
                         f"{B} samples")


def _check_values(lay: SparseLayout) -> None:
    """The values of a hand-made layout: each row a site, inv_map its inverse, offsets the sample bounds."""
    N, HW = lay.row_pos.shape[0], lay.height * lay.width
    pos = lay.row_pos.long()
    flat = lay.inv_map.reshape(-1).long()
    off = lay.offsets.long()
    bad = ((pos < 0) | (pos >= flat.shape[0])).nonzero()
    if bad.numel():
        p = int(bad[0, 0])
        raise ValueError(f"SparseLayout: row_pos[{p}] = {int(pos[p])} is not a site of the "
                         f"{lay.batch_size}x{lay.height}x{lay.width} layout")
    bad = ((flat < -1) | (flat >= N)).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(f"SparseLayout: inv_map holds {int(flat[i])} at flat site {i}, neither -1 (inactive) nor a "
                         f"row in [0, {N})")
    if N:
        back = (flat[pos] != torch.arange(N, device=pos.device)).nonzero()
        if back.numel():
            p = int(back[0, 0])
            raise ValueError(f"SparseLayout: row_pos and inv_map disagree at row {p} (row_pos = {int(pos[p])}, inv_map "
                             f"there = {int(flat[pos[p]])}): duplicate or corrupt rows")
    if lay.block is not None and lay.block > 1:  # whole aligned blocks active or inactive
        b = lay.block
        blocks = (lay.inv_map >= 0).view(lay.batch_size, lay.height // b, b, lay.width // b, b)
        if bool((blocks.all(dim=(2, 4)) != blocks.any(dim=(2, 4))).any()):
            raise ValueError(f"SparseLayout.block = {b} but some aligned {b}x{b} block is only partly active")
    active = int((flat >= 0).sum())
    if active != N:
        raise ValueError(f"SparseLayout: inv_map marks {active} active sites but row_pos lists {N} rows")
    if int(off[0]) != 0 or int(off[-1]) != N or bool((off[1:] < off[:-1]).any()):
        raise ValueError(f"SparseLayout: offsets must start at 0, end at N = {N} and never decrease, got "
                         f"{off.tolist()[:8]}{'...' if off.numel() > 8 else ''}")
    if N:
        sample = pos // HW
        want = torch.searchsorted(off[1:], torch.arange(N, device=pos.device), right=True)
        wrong = (sample != want).nonzero()
        if wrong.numel():
            p = int(wrong[0, 0])
            raise ValueError(f"SparseLayout: row {p} lies in sample {int(sample[p])} but offsets put it in sample "
                             f"{int(want[p])} (rows must be sample-major)")


def _check_mask(mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor [B, gh, gw] (1 = masked), got {type(mask).__name__}")
    if mask.dim() != 3:
        raise ValueError(f"mask must be 3-D [B, gh, gw] (1 = masked), got shape {tuple(mask.shape)}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise TypeError(f"mask must be bool or integer (1 = masked, 0 = kept), got {mask.dtype}")
    return mask.bool()


def build_layout(mask: torch.Tensor, resolution: int | tuple[int, int], kept_per_sample: int | None = None
                 ) -> SparseLayout:
    """Layout of one stage from the FCMAE patch mask.

    Args:
        mask: ``[B, gh, gw]`` bool or integer, 1/True = masked patch, 0/False = kept.
        resolution: the stage's ``H`` (or ``(H, W)``); must be a multiple of the mask grid.
        kept_per_sample: number of kept patches in *every* sample (FCMAE: ``num_kept(L, ratio)``).
            With it the layout is built without any host synchronisation and N is static;
            without it the counts are read from the mask (one sync), and samples may differ.
    """
    mask = _check_mask(mask)
    B, gh, gw = mask.shape
    if isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        H, W = (args.positive_int(f"resolution[{i}]", r) for i, r in enumerate(resolution))
    else:
        H = W = args.positive_int("resolution", resolution, "a positive int or a pair of them")
    if kept_per_sample is not None:
        kept_per_sample = args.int_at_least("kept_per_sample", kept_per_sample, 0, "an int >= 0 or None")
    if H <= 0 or W <= 0 or H % gh or W % gw:
        raise ValueError(f"resolution {(H, W)} must be a positive multiple of the mask grid {(gh, gw)}")
    bh, bw = H // gh, W // gw
    active = (~mask).repeat_interleave(bh, dim=1).repeat_interleave(bw, dim=2)  # [B, H, W]
    block = bh if bh == bw else None
    if kept_per_sample is None:
        return layout_from_active(active, block=block)
    if not 0 <= kept_per_sample <= gh * gw:
        raise ValueError(f"kept_per_sample must be in [0, {gh * gw}], got {kept_per_sample}")
    check_kept(mask, kept_per_sample, "kept_per_sample")  # CPU masks; on a GPU the caller's promise
    return layout_from_active(active, rows_per_sample=kept_per_sample * bh * bw, block=block)


def layout_from_active(active: torch.Tensor, rows_per_sample: int | None = None, block: int | None = None
                       ) -> SparseLayout:
    """Layout from a ``[B, H, W]`` bool map of active sites.

    With ``rows_per_sample`` (the same count R in every sample) everything is computed with
    static shapes: a running count gives each active site its rank, and a scatter writes the
    positions; inactive sites are sent to a spare column that is then dropped.
    ``block``: set only by callers that know the active set is made of whole aligned b x b blocks
    (:func:`build_layout`); it is trusted, not checked.
    """
    if active.dim() != 3 or active.dtype != torch.bool:
        raise ValueError(f"active must be a [B, H, W] bool tensor, got {tuple(active.shape)} {active.dtype}")
    B, H, W = active.shape
    HW = H * W
    if B * HW >= 2**31:
        raise ValueError(f"B*H*W = {B * HW} does not fit the int32 positions of the layout")
    dev = active.device
    flat = active.reshape(B, HW)
    if rows_per_sample is not None:
        R = rows_per_sample
        rank = flat.to(torch.int32).cumsum(1, dtype=torch.int32) - 1  # [B, HW]
        col = torch.where(flat, rank, torch.full_like(rank, R)).long()
        local = torch.zeros(B, R + 1, dtype=torch.int32, device=dev)
        src = torch.arange(HW, dtype=torch.int32, device=dev).expand(B, HW)
        local.scatter_(1, col, src)
        base = torch.arange(B, dtype=torch.int32, device=dev) * HW
        row_pos = (local[:, :R] + base[:, None]).reshape(-1)
        first = torch.arange(B, dtype=torch.int32, device=dev)[:, None] * R
        inv_map = torch.where(flat, rank + first, torch.full_like(rank, -1)).view(B, H, W)
        offsets = torch.arange(B + 1, dtype=torch.int32, device=dev) * R
        return SparseLayout(B, H, W, row_pos, inv_map, offsets, rows_per_sample=R, trusted=True, block=block)
    # Variable counts: data-dependent N (one host sync), as any sparse library needs.
    counts = flat.sum(1, dtype=torch.int32)
    offsets = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    offsets[1:] = counts.cumsum(0, dtype=torch.int32)
    row_pos = flat.reshape(-1).nonzero().squeeze(1).to(torch.int32)
    rank = flat.reshape(-1).to(torch.int32).cumsum(0, dtype=torch.int32) - 1
    inv_map = torch.where(flat.reshape(-1), rank, torch.full_like(rank, -1)).view(B, H, W)
    return SparseLayout(B, H, W, row_pos, inv_map, offsets, rows_per_sample=None, trusted=True, block=block)


def _check_rows(x: torch.Tensor, layout: SparseLayout, name: str = "x") -> None:
    if not isinstance(layout, SparseLayout):
        raise TypeError(f"layout must be a SparseLayout (see build_layout), got {type(layout).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D [N, C] tensor of packed rows, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[0] != layout.num_rows:
        raise ValueError(f"{name} has {x.shape[0]} rows but the layout has {layout.num_rows} active sites "
                         f"(is the layout from another stage? it is {layout.height}x{layout.width})")
    if x.device != layout.device:
        raise ValueError(f"{name} is on {x.device} but the layout is on {layout.device}")


def to_dense(x: torch.Tensor, layout: SparseLayout) -> torch.Tensor:
    """Scatter packed rows ``[N, C]`` into a zero-filled ``[B, C, H, W]`` (channels_last memory).

    The shape comes from the layout, never from the largest active coordinate (upstream's
    ``SparseTensor.dense()`` shrinks the map when the last row/column is masked everywhere).
    """
    _check_rows(x, layout)
    B, H, W, C = layout.batch_size, layout.height, layout.width, x.shape[1]
    out = x.new_zeros(B * H * W, C).index_copy(0, layout.row_pos.long(), x)
    return out.view(B, H, W, C).permute(0, 3, 1, 2)


def from_dense(dense: torch.Tensor, layout: SparseLayout) -> torch.Tensor:
    """Gather the active sites of a dense ``[B, C, H, W]`` map into packed rows ``[N, C]``."""
    if not isinstance(dense, torch.Tensor) or dense.dim() != 4:
        raise ValueError(f"dense must be a 4-D [B, C, H, W] tensor, got "
                         f"{tuple(dense.shape) if isinstance(dense, torch.Tensor) else type(dense).__name__}")
    B, C, H, W = dense.shape
    if (B, H, W) != (layout.batch_size, layout.height, layout.width):
        raise ValueError(f"dense has batch/spatial shape {(B, H, W)} but the layout is "
                         f"{(layout.batch_size, layout.height, layout.width)}")
    rows = dense.permute(0, 2, 3, 1).reshape(B * H * W, C)
    return rows.index_select(0, layout.row_pos.long())
