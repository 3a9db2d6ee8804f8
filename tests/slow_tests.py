"""Which tests carry the ``slow`` marker: the long end-to-end runs, each over 10 s on the shared
2-core machine (``pytest --durations=40``, 2026-12-01, under load). ``bash tools/dev.sh fast``
(``pytest -m "not slow"``) leaves them out for the inner loop; ``bash tools/dev.sh test`` and CI
run everything.

Kept here, in one list, rather than as decorators in each file, so marking a test slow never
touches the file that tests the code. A name matches every parametrisation of the test.
"""

from __future__ import annotations

import pytest

SLOW = frozenset(
    {
        # torchrun and gloo end-to-end runs
        "test_dist_train.py::test_two_ranks_match_one_rank_with_the_same_global_batch",
        "test_dist_train.py::test_stop_mid_epoch_and_resume_exactly",
        "test_dist_train.py::test_epoch_end_checkpoint_resumes_under_another_rank_count",
        "test_dist_train.py::test_s3_dataset_scores_and_checkpoint",
        "test_dist_checkpoint.py::test_sigkill_one_rank_then_resume_all_ranks",
        "test_dist_checkpoint.py::test_checkpoint_refuses_ranks_at_different_positions",
        "test_dist_sync.py::test_exchange_keeps_int64_ids_above_2_pow_24",
        "test_dist_sync.py::test_ranks_share_one_score_state",
        "test_dist_liveness.py::test_a_killed_rank_is_named_and_the_others_stop",
        # killed processes, real servers, whole pipelines
        "test_loader_lightning_ddp.py::test_ddp_ranks_train_disjoint_shares_and_prune",
        "test_loader_lightning_ddp.py::test_a_loader_made_before_the_process_group_refuses_on_every_rank",
        "test_loader_exit.py::test_a_script_ending_mid_epoch_exits_with_its_own_status",
        "test_loader_accelerate.py::test_two_process_accelerate_resumes_each_rank_exactly",
        "test_scores_crash.py::test_sigkill_during_flush_leaves_the_last_complete_state",
        "test_readme.py::test_readme_training_loop_runs",
        "test_demo.py::test_train_bench_quick_runs_the_grid_and_checks_targets",
        "test_format_s3.py::test_cli_writes_to_s3",
        "test_format_s3.py::test_missing_s3_dataset_and_header_written_last",
        "test_format_s3.py::test_zarr_to_s3_and_corruption_is_named",
        "test_format_s3.py::test_tar_to_s3_matches_local_and_reads_back",
        "test_loader_s3.py::test_s3_epoch_equals_local_epoch",
        "test_loader_s3.py::test_transient_faults_still_yield_every_sample_once",
        "test_loader_s3.py::test_persistent_failure_names_url_and_range",
        "test_loader_s3.py::test_endpoint_and_credentials_from_environment",
        "test_loader_transport.py::test_packed_result_crosses_a_real_process_queue",
        "test_loader_resume.py::test_resume_with_workers_and_transform",
        "test_make_shards.py::test_real_process_progress_and_errors",
        "test_format_interrupt.py::test_killed_conversion_is_not_a_dataset_and_rerun_finishes",
        "test_format_interrupt.py::test_ctrl_c_exits_130_with_one_line_and_leaves_no_dataset",
        # over 3 s on a quiet machine (--durations=25 of the fast subset, 2026-12-01 12:30)
        "test_storage_s3.py::test_persistent_error_is_bounded_and_named",
        "test_storage_s3.py::test_read_ranges_of_several_objects_with_a_fault",
        "test_scores_store.py::test_large_ids_never_pass_through_the_loss_dtype",
        "test_scores_store.py::test_s3_store_roundtrip_and_resume",
        "test_loader_quality.py::test_cli_prints_a_table_and_json",
        "test_format_s3.py::test_index_tars_on_s3_with_the_cli",
        "test_loader_adapters.py::test_passes_past_num_epochs_anneal_like_the_loader",
        "test_loader_adapters.py::test_resume_mid_epoch_yields_the_remaining_batches",
        "test_loader_transport.py::test_a_killed_worker_fails_the_epoch_clearly_and_a_new_pass_recovers",
        "test_dist_train.py::test_help_and_bad_arguments",
    }
)


def mark_slow(items: list[pytest.Item]) -> None:
    """Add the ``slow`` marker to every collected test named in :data:`SLOW`."""
    for item in items:
        name = f"{item.path.name}::{item.originalname}" if isinstance(item, pytest.Function) else item.nodeid
        if name in SLOW:
            item.add_marker(pytest.mark.slow)
