"""A whole slide through the encoder: a seamless encoding map as a tiled pyramidal TIFF (the ``encode`` command).

``python -m aeutils encode SLIDE... --out DIR`` writes ``DIR/<slide>.encoding.tiff``: the 1-channel
encoding of the slide's tissue (background 0), 4x coarser than the input scale (about W/4 x H/4 px
for level 0), 8-bit grey, tiled (256 px), zlib, with a pyramid (each level half the previous) and
resolution tags (4 x the input um/px), so OpenSlide, QuPath and :mod:`aeutils.slides` open it with
its mpp. ``--reconstruction`` also writes ``<slide>.reconstruction.tiff``, the decoded RGB at the
input scale (JPEG tiles, background white).

How (all sizes in *input pixels*: pixels at the scale chosen by :mod:`aeutils.scale`):

* **Seamless.** The encoder is fully convolutional (:meth:`~aeutils.model.Autoencoder.encoder_forward`
  takes any size); latent pixel ``j`` is centred on input pixel ``4j`` and depends only on input
  pixels within half the receptive field (:func:`aeutils.introspect.receptive_field`). So the slide
  is cut into *cores* of ``core`` px (a multiple of 4) read with a ``margin`` (:func:`encoder_margin`,
  >= half the receptive field, a multiple of 4) on each side, clipped at the slide's edges; only the
  core's latents are kept. The map equals the one-shot encoding of the whole image up to float noise
  (``tests/test_slidemap.py``). With ``--reconstruction`` the margin grows by the decoder's reach
  (:func:`decoder_margin`) so the decoded core is seamless too.
* **Tissue only.** Cores without tissue (:func:`aeutils.tissue.detect_tissue`) are skipped; latent
  pixels outside the mask are background in the views and excluded from their statistics.
* **Fast and bounded.** Each row of cores is read in runs of up to ``run`` neighbouring tissue cores
  (one region read each, like extraction's strips), encoded in batches of same-shape tiles under the
  CPU/GPU speed choice of :func:`aeutils.speed.inference_choice` (bf16 where it measures faster;
  ``precision="fp32"`` forces the exact path), and each finished core is saved at once to a work
  folder ``DIR/.<slide>.encoding.work/`` (one ``.npy`` per core). Memory holds a few tiles, never the map.
* **Views** (:data:`VIEWS`): ``raw`` (min-max), ``stretch`` (``low``-``high`` percentiles,
  ``skimage.exposure.rescale_intensity``) and ``equalize`` (histogram equalisation, the CDF over
  4096 bins as ``skimage.exposure.equalize_hist`` computes it), with the minimum, maximum, percentiles
  and histogram taken over the **whole slide's tissue** (:class:`MapStats`), so contrast is the same
  in every tile. The TIFF is then assembled tile by tile from the work folder.
* **Resume.** The work folder records the run's settings (slide, scale, model digest, tiling);
  rerunning the same command continues where it stopped, other settings restart it. The TIFF is
  written to a temporary name and renamed when complete: never a half-written file under the final
  name. A finished map whose settings match is left as is ("up to date"); one made with other settings
  (view, checkpoint, scale: :func:`~aeutils.slidemap.encode.map_differences`) is refused unless
  ``overwrite`` (``--overwrite``). A damaged work file is encoded again. One writer per output folder
  (:func:`aeutils.io.folder_lock`): a second ``encode`` into it is refused in one line naming the first.

One module per idea (all sizes in input pixels unless named latent):

============  ========================================================================================
``geometry``  pure: :class:`TileGrid` (cores, read boxes, latent boxes), the margins from the receptive
              field (:func:`encoder_margin`, :func:`decoder_margin`), which cores touch the tissue
``sources``   input pixels by region: :class:`ArraySource` (an image), :class:`SlideSource` (a slide at
              a scale: TIFF tiles where verified identical, else OpenSlide)
``tiles``     the tile loop: runs of cores read as one region, :class:`TileEncoder` (batches, speed
              choice, decoding), :func:`encode_image` (an in-memory image, every core)
``stats``     whole-slide statistics and views: :class:`MapStats`, :data:`VIEWS`, :func:`to_uint8`
``store``     the resumable work folder: :class:`WorkStore` (one ``.npy`` per finished core)
``pyramid``   the tiled pyramidal TIFF writer (:func:`write_pyramid`) and its settings record
              (:func:`read_settings`)
``figure``    :func:`map_figure`: the slide's thumbnail beside its map, read back as a viewer would
``encode``    :func:`encode_slide`, a short procedure over the above; :class:`SlideMap`, what it did
``cli``       ``python -m aeutils encode``
============  ========================================================================================

Importing the package does not import torch (the functions import it when they run).
"""
from __future__ import annotations

from aeutils.slidemap.cli import add_cli_arguments, run_cli, summary_line
from aeutils.slidemap.encode import ENCODING_SUFFIX, RECONSTRUCTION_SUFFIX, SlideMap, encode_slide, model_for
from aeutils.slidemap.figure import map_figure, write_map_figure
from aeutils.slidemap.geometry import (
    STRIDE, TileGrid, decoder_margin, encoder_margin, latent_mask, tile_margin, tissue_tiles,
)
from aeutils.slidemap.pyramid import FORMAT, TIFF_TILE, pyramid_factors, read_settings, write_pyramid
from aeutils.slidemap.sources import ArraySource, SlideSource
from aeutils.slidemap.stats import EQ_BINS, STAT_BINS, VIEWS, MapStats, to_uint8
from aeutils.slidemap.store import WorkStore
from aeutils.slidemap.tiles import ACTIVATION_BUDGET, TileEncoder, TileJob, auto_batch_size, encode_image, read_jobs

#: the user-facing names; the plumbing imported above (CLI wiring, codecs, internals) stays importable from
#: here for the package's own modules and tests, but is not exported
__all__ = [
    "encode_slide",
    "SlideMap",
    "encode_image",
    "map_figure",
    "write_map_figure",
    "read_settings",
    "MapStats",
    "VIEWS",
    "STRIDE",
    "ENCODING_SUFFIX",
    "RECONSTRUCTION_SUFFIX",
]
