"""Shared fixtures. Synthetic-slide builders live in tests/synthetic.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Keep the CPU tests predictable on small CI machines: at most two OpenMP threads, and idle threads
# sleep instead of spinning (spinning threads made subprocess-heavy tests, e.g. torchrun ranks and
# notebook kernels, many times slower when they shared the two cores). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def sample_slide_path() -> Path:
    """The bundled sample slide (checksum verified)."""
    from aeutils import sample_slide

    return sample_slide()


# --------------------------------------------------------------------------------------------- the fast lane
#: Tests marked ``slow``: ``make test-fast`` (``pytest tests -m "not slow"``) leaves them out, ``make test``
#: runs everything. A file name marks the whole file; ``file::test`` one test function (all its parameters).
#: Chosen from ``pytest --durations=0`` of these files (2 shared cores): each took more than ~3 s there.
#: What stays in the fast lane still covers every module; the slow tests are the end-to-end runs (training,
#: torchrun, a real browser, the benches' smoke runs, kill -9 / resume, whole-slide encodes).
SLOW_FILES = frozenset({
    "test_train.py", "test_ddp.py", "test_browser.py", "test_bench_encode.py", "test_bench_extract.py",
    "test_bench_loss.py", "test_bench_sensitivity.py", "test_bench_sr.py", "test_bench_train.py",
})
SLOW_TESTS = frozenset({
    "test_speed.py::test_bf16_training_keeps_validation_psnr_within_0_2_db",
    "test_speed.py::test_probe_on_a_real_model_leaves_weights_and_rng_alone",
    "test_slidemap.py::test_kill_9_mid_run_then_rerun_resumes",
    "test_slidemap.py::test_100k_slide_stays_under_3_gb",
    "test_slidemap.py::test_interrupted_run_resumes_to_the_same_file",
    "test_slidemap.py::test_encode_writes_pyramids_openslide_opens_with_mpp",
    "test_slidemap.py::test_any_size_and_reconstruction_are_seamless",
    "test_slidemap.py::test_tiled_map_equals_one_shot_encoding",
    "test_slidemap.py::test_cli_progress_in_mpx_per_s_and_duplicate_names",
    "test_slidemap.py::test_resampled_scale_and_the_bf16_route",
    "test_extract_many.py::test_shards_merge_into_the_unsharded_manifest",
    "test_extract_many.py::test_one_bar_summary_per_slide_clean_error_lines",
    "test_extract_safety.py::test_1_rerun_with_other_patch_size_is_refused_in_one_line",
    "test_extract_safety.py::test_4_task_errors_carry_their_kind",
    "test_extract_safety.py::test_4_slide_failing_midway_leaves_nothing_unlisted",
    "test_extract_safety.py::test_6_duplicate_slides",
    "test_extract_safety.py::test_3_workers_die_with_their_parent",
    "test_cli_extract.py::test_kill_9_then_resume_is_byte_identical",
    "test_cli_extract.py::test_bad_inputs_one_line_each_and_good_slides_done",
    "test_slide_explorer.py::test_sliders_and_clicks_move_the_patch",
    "test_viz.py::test_explorer_no_figure_leak",
    "test_viz.py::test_figures_cli_writes_six_pngs",
    "test_baselines.py::test_vgg16_hed_weights_and_caffe_convention",
    "test_sr.py::test_few_steps_reduce_loss",
    "test_checkpoint.py::test_a_flipped_byte_in_any_stored_tensor_is_caught",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark :data:`SLOW_FILES`, :data:`SLOW_TESTS` and every notebook cell (nbval) ``slow``."""
    for item in items:
        file = item.path.name
        name = getattr(item, "originalname", None) or item.name
        if file in SLOW_FILES or f"{file}::{name}" in SLOW_TESTS or item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
