"""Grid patch extraction: tissue cells of whole-slide images to PNG files and ``manifest.csv``.

Output tree (ImageFolder-compatible)::

    OUT/<tumour|normal|unlabeled>/<slide>_<x>_<y>.png    # x, y: level-0 top-left of the patch
    OUT/manifest.csv                                      # one row per finished PNG (see aeutils.manifest)
    OUT/<slide>.qc.png                                    # QC: thumbnail, tissue mask, kept grid by label
    OUT/manifest.shard-K-of-N.csv                         # instead of manifest.csv with --shard K/N

One module per idea:

==============  ======================================================================================
``grid``        grid planning, pure: :class:`GridCell`, :class:`SlidePlan`, :func:`plan_slide`, sampling, shards
``qc``          the QC figure: :func:`plot_grid` (histolab's ``locate_tiles`` analogue)
``codec``       PNG bytes (:func:`encode_png`), the "is it whole?" check, the patch's manifest row
``runner``      cells -> tasks of strips, the process pool, reading pixels (OpenSlide / TIFF tiles)
``resume``      what the output folder holds: finished patches, conflicts, manifest rows, shard files
``extraction``  :func:`extract`, a short procedure over the above
``cli``         ``python -m aeutils extract``
==============  ======================================================================================

Tissue: by default a mask detected on a thumbnail (:mod:`aeutils.tissue`); ``mask=`` / ``--mask`` /
``--mask-dir`` give your own (as histolab's ``extraction_mask`` and TIAToolbox's ``input_mask``).

Scale (:mod:`aeutils.scale`): ``level`` (default 0) is read as is; ``mpp`` picks the level within 10 %
of it, or else downsamples the next finer level (antialiased, ``resample_filter`` / ``--resample-filter``:
Lanczos by default, which keeps tissue detail; never upsampling a coarser one).
At factor 1 each patch is exactly ``OpenSlide.read_region((x, y), level, (size, size)).convert("RGB")``.
To avoid decoding shared tiles once per patch, neighbouring cells are read as one strip and sliced
(pixel-identical at level 0 and at levels with an integer downsample; other levels are read per
patch); resampled patches are computed from the strip exactly as from a read of their own
(:func:`aeutils.scale.read_scaled`). On tiled TIFF slides (Aperio .svs, generic tiled .tif) strips are
decoded straight from the TIFF tiles (:mod:`aeutils.tiffread`, ~4x cheaper than OpenSlide's painting)
wherever that was verified at open to give OpenSlide's exact pixels; OpenSlide reads everything
else. Strips run on a process pool (one OpenSlide handle per worker,
every core by default); the workers die with the parent (``kill -9`` included).

Writes are atomic (temp file + rename) and the PNG encoding is deterministic, so an interrupted run
(Ctrl-C, ``kill -9``) is resumed by running the same command again: finished PNGs (header, size in the
manifest, or a full decode for unlisted ones) are skipped and the final tree is byte-identical to an
uninterrupted run. Nothing is deleted silently: a rerun whose grid differs from the one a slide was
extracted with is refused (``overwrite=True`` / ``--overwrite`` replaces it); a slide that fails
mid-way has the files of this run removed; other slides' rows are kept only if their files exist;
``--overwrite`` never removes a file a manifest row names outside OUT (reported in one line). One writer
per OUT (:func:`aeutils.io.folder_lock`, ``OUT/.aeutils.lock`` with the owner's pid): a second run is
refused in one line naming the first; ``--shard K/N`` runs write beside each other (each locks its
shard) but not beside an unsharded run. A run that holds OUT removes the temp files killed writes left.

This package (and the ``extract`` command) never imports torch.
"""
from __future__ import annotations

from aeutils.manifest import MANIFEST_COLUMNS, MANIFEST_NAME, REQUIRED_COLUMNS, read_manifest
from aeutils.patches.cli import add_cli_arguments, run_cli
from aeutils.patches.codec import encode_png, manifest_row, png_complete
from aeutils.patches.extraction import extract
from aeutils.patches.grid import (
    LABEL_DIRS, GridCell, SlidePlan, parse_shard, plan_grid, plan_slide, sample_cells, shard_of,
)
from aeutils.patches.qc import drawable_text, plot_grid
from aeutils.patches.runner import BLOCK_SIDE, default_workers

#: the user-facing names; the plumbing imported above (CLI wiring, codecs, internals) stays importable from
#: here for the package's own modules and tests, but is not exported
__all__ = [
    "extract",
    "plan_grid",
    "plan_slide",
    "sample_cells",
    "shard_of",
    "parse_shard",
    "GridCell",
    "SlidePlan",
    "read_manifest",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "plot_grid",
]
