"""Looking at encodings, one module per idea:

    :mod:`aeutils.viz.views`    numbers -> display arrays: :func:`encoding_view` (raw min-max,
                                percentile stretch, histogram equalisation, CLAHE), :func:`describe_scale`
    :mod:`aeutils.viz.figures`  batch grids, the per-patch :class:`PatchPanel`, the sample-slides
                                figure, :func:`write_figures` and the ``figures`` command (README images)
    :mod:`aeutils.viz.widget`   the ipywidgets :class:`Explorer` (:func:`explore`)

Running the model is not visualisation: :func:`aeutils.encoding.encode_batch` makes the
:class:`~aeutils.encoding.EncodedBatch` these show.

Shapes and scales at each encoder tap (:data:`aeutils.model.TAPS`; 181 px patches at level 0 of the
sample slide; stage widths from ``config.widths``, 32, 32, 8 for the shipped model):

    input           Nx3x181x181 RGB in [0, 1], 0.499 um/px (level 0; x downsample at other levels)
    stage1          Nx(w1)x91x91 features, 2x the input pixel size
    stage2, stage3  Nx(w2)x46x46, Nx(w3)x46x46 features, 4x the input pixel size
    encoding        Nx1x46x46 unbounded floats, 4x the input pixel size (1.996 um/px)
    reconstruction  Nx3x181x181 RGB in [0, 1]

``import aeutils`` does not import this package; torch is imported inside the functions that need it.
"""
from __future__ import annotations

from aeutils.viz.figures import (
    FIGURE_FILES,
    GRID_FIGURE_WIDTH,
    SLIDES_FIGURE_PX,
    PatchPanel,
    add_cli_arguments,
    batch_grid,
    encoding_grid_figure,
    error_map,
    figure_png,
    grid_figure,
    grid_figure_size,
    input_grid_figure,
    patch_panel,
    run_cli,
    sample_slides_figure,
    write_figures,
)
from aeutils.viz.views import ENCODING_STRIDE, TAP_STRIDE, VIEW_LABELS, VIEWS, describe_scale, encoding_view, encoding_views
from aeutils.viz.widget import Explorer, explore

#: the user-facing names; the plumbing imported above (CLI wiring, codecs, internals) stays importable from
#: here for the package's own modules and tests, but is not exported
__all__ = [
    "Explorer", "explore", "PatchPanel", "patch_panel", "encoding_view", "encoding_views", "describe_scale", "VIEWS",
    "VIEW_LABELS", "ENCODING_STRIDE", "TAP_STRIDE", "batch_grid", "grid_figure", "input_grid_figure",
    "encoding_grid_figure", "error_map", "sample_slides_figure", "write_figures",
]


def __getattr__(name: str) -> object:
    """``aeutils.viz.STAGE_STRIDE``: the old name of :data:`TAP_STRIDE` (``DeprecationWarning``)."""
    if name == "STAGE_STRIDE":
        from aeutils.viz import views

        return views.__getattr__(name)
    raise AttributeError(f"module 'aeutils.viz' has no attribute {name!r}")
