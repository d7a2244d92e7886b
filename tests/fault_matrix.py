"""The fault matrix: every fault the reliability tests inject and what must hold after it.

One row per fault: (what goes wrong, what must hold afterwards, the test that injects it). docs/RELIABILITY.md
lists the same rows with their count; tests/test_fault_matrix.py checks that both agree and that every row
names a test that exists, so each row passes or fails with its test in CI.
"""

from __future__ import annotations

from typing import NamedTuple


class Fault(NamedTuple):
    fault: str
    must_hold: str
    test: str  # tests/<file>.py::<test function>


FAULTS: tuple[Fault, ...] = (
    Fault("a second `pipeline extract` on a store another run is writing",
          "it fails at once naming the holder (host, pid, start time); the first run's store verifies",
          "tests/test_extract_lease.py::test_second_extraction_fails_fast_naming_the_holder_and_first_store_verifies"),
    Fault("a second lease request on a held target (any command)",
          "refused within 1 s, the message names holder, lease file and --wait",
          "tests/test_lease.py::test_second_holder_is_refused_naming_the_first"),
    Fault("`--wait` while another run holds the lease",
          "it waits, then takes the released lease; with a timeout it gives up naming the holder",
          "tests/test_lease.py::test_wait_takes_the_lease_once_the_holder_finishes"),
    Fault("an extraction SIGKILLed while holding its lease",
          "the next run takes the stale lease over at once (same host) and resumes, keeping complete shards",
          "tests/test_extract_lease.py::test_killed_runs_lease_is_taken_over_and_the_run_resumes"),
    Fault("a lease left by a SIGKILLed process on this host",
          "taken over at once, naming the dead pid",
          "tests/test_lease.py::test_lease_of_a_killed_process_on_this_host_is_taken_over"),
    Fault("a lease held from another host (shared filesystem)",
          "honoured while its heartbeat is fresh, taken over once it is stale",
          "tests/test_lease.py::test_other_hosts_lease_counts_until_its_heartbeat_is_stale"),
    Fault("a live holder over several stale-after periods",
          "its heartbeat keeps the lease fresh, so it is never taken over",
          "tests/test_lease.py::test_heartbeat_keeps_a_live_lease_fresh"),
    Fault("four runs breaking one stale lease at the same moment",
          "exactly one holds it, the others are refused",
          "tests/test_lease.py::test_many_runs_breaking_one_stale_lease_yield_one_holder"),
    Fault("a lease taken over underneath its holder",
          "the holder stops before its next commit point (complete flag, checkpoint)",
          "tests/test_lease.py::test_a_lease_taken_over_underneath_its_holder_stops_it"),
    Fault("a second `distill` into a run directory being trained",
          "refused naming the holder before anything is read or written",
          "tests/test_lease.py::test_second_distill_into_a_run_directory_is_refused_naming_the_holder"),
    Fault("a transcode into a destination store being written",
          "refused naming the holder",
          "tests/test_lease.py::test_transcode_into_a_destination_being_written_is_refused"),
    Fault("the disk fills during an extraction (real tmpfs, or injected ENOSPC)",
          "exit 2 naming path and free space, only whole shards marked complete; re-run after freeing "
          "space gives arrays and statistics identical to an uninterrupted run",
          "tests/test_disk_full.py::test_disk_full_mid_extraction_then_rerun_equals_uninterrupted"),
    Fault("the disk fills while a shard's statistics or its complete flag are written",
          "the shard is not marked complete; the re-run rewrites it; identical arrays",
          "tests/test_disk_full.py::test_disk_full_during_statistics_and_complete_flag_leaves_the_shard_unmarked"),
    Fault("the disk fills while a checkpoint is written",
          "the previous checkpoint is kept byte for byte, no temporary left; resume equals an uninterrupted run",
          "tests/test_disk_full.py::test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_resume_equals_uninterrupted"),
    Fault("one rank SIGKILLed under `torchrun --nproc-per-node 2 --max-restarts 1` (gloo)",
          "the group restarts and resumes from the last checkpoint; same losses step by step, same weights",
          "tests/test_torchrun_restart.py::test_killed_rank_restarts_the_group_and_the_run_equals_an_uninterrupted_one"),
    Fault("a truncated or altered normalizer file",
          "error naming the file and how to recover; not refitted; the file is left as it was",
          "tests/test_damaged_files.py::test_damaged_normalizer_is_never_refitted"),
    Fault("a truncated or altered checkpoint",
          "error naming the file and how to recover; never retrained (CLI, evaluate, DVC's `distill --sweep`)",
          "tests/test_damaged_files.py::test_damaged_checkpoint_is_never_retrained"),
    Fault("a truncated config.json",
          "error naming the file (not valid JSON) and how to recover",
          "tests/test_damaged_files.py::test_truncated_config_json_names_the_file"),
    Fault("an altered config.json",
          "error naming the fields in which it disagrees with the checkpoint",
          "tests/test_damaged_files.py::test_altered_config_json_disagrees_with_the_checkpoint"),
    Fault("a truncated or altered extraction receipt",
          "error naming the file and the command that rewrites it",
          "tests/test_damaged_files.py::test_damaged_receipt_names_the_file_and_how_to_rewrite_it"),
    Fault("a truncated or altered manifest",
          "error naming the file and how to rebuild it (distill and extract)",
          "tests/test_damaged_files.py::test_damaged_manifest_names_the_file_and_how_to_rebuild_it"),
    Fault("a Ray actor SIGKILLed mid-run",
          "restarted, its shards retried; the store equals an uninterrupted run's",
          "tests/test_extract_ray_faults.py::test_actor_killed_mid_run_is_restarted_and_its_shards_retried"),
    Fault("the extraction driver SIGKILLed mid-run",
          "only whole shards kept; the re-run computes exactly the rest; identical store",
          "tests/test_extract_ray_faults.py::test_ray_driver_killed_then_rerun_equals_uninterrupted_run"),
    Fault("an extraction on a two-node Ray cluster started apart from the pipeline",
          "shards run on both nodes (node ids in the report); the cluster keeps running afterwards",
          "tests/test_ray_cluster.py::test_extraction_on_a_two_node_cluster_uses_both_nodes_and_leaves_the_cluster_running"),
    Fault("the second Ray node lost mid-run (raylet and workers SIGKILLed)",
          "the run finishes on the head node (or stops with a clear error); the re-run gives an identical store",
          "tests/test_ray_cluster.py::test_losing_a_node_mid_run_finishes_on_the_head_and_rerun_equals_uninterrupted"),
    Fault("a flipped byte and a lost chunk file in complete, folded shards of a finished store",
          "verify names both shards and the repair command; `extract --redo-shards` refuses a partial list, then "
          "gives arrays identical to an uninterrupted run and statistics within 1e-12 relative",
          "tests/test_extract_redo.py::test_redo_of_damaged_folded_shards_equals_an_uninterrupted_run"),
    Fault("a `pipeline corpus` build SIGKILLed mid-run",
          "finished parts kept; the re-run builds only the unfinished units; the manifest is byte for byte an "
          "uninterrupted build's",
          "tests/test_corpus_resume.py::test_killed_corpus_build_resumes_and_equals_an_uninterrupted_one"),
    Fault("damaged, empty, truncated or compressed tar shards, a corrupt or non-image member",
          "each a manifest row with a reason, never a crash; every member of every shard accounted for",
          "tests/test_corpus_shards.py::test_damaged_shards_are_rows_with_a_reason_never_a_crash"),
    Fault("CUDA out of memory in a teacher forward (injected on the CPU)",
          "the teacher's batch halves (down to 1), the shard is redone whole; arrays equal a run at the smaller "
          "batch; recorded in the store and printed",
          "tests/test_extract_oom.py::test_out_of_memory_halves_the_batch_redoes_the_shard_and_equals_a_smaller_batch_run"),
    Fault("a second writer on an s3:// root (and a SIGKILLed holder there)",
          "refused within seconds naming the holder; the dead holder's lease is taken over at once",
          "tests/test_lease_s3.py::test_second_writer_on_an_s3_root_is_refused_naming_the_holder"),
    Fault("SIGINT to an in-process extraction, SIGTERM to one on Ray",
          "stops between shards naming the complete and pending shards and the teachers not started, exit 130 / "
          "143; the printed command resumes, skipping every kept shard",
          "tests/test_interrupts.py::test_an_interrupted_extraction_says_what_it_kept_and_the_resume_command_finishes_it"),
    Fault("SIGTERM to a distillation",
          "checkpoint at the step reached, the steps kept and not, exit 143; the printed `--resume` command "
          "finishes with every step logged once",
          "tests/test_interrupts.py::test_an_interrupted_distillation_says_what_it_kept_and_the_resume_command_finishes_it"),
    Fault("`--ray-address` refused, silent or not a Ray cluster (corpus, extract, views, transcode, demo)",
          "one line naming the address within `--ray-timeout`, exit 2, nothing written",
          "tests/test_user_mistakes.py::test_an_unreachable_cluster_address_is_one_line_naming_it"),
    Fault("every writing command on a read-only filesystem",
          "one line naming the path and what to do, exit 2; reading commands still work",
          "tests/test_user_mistakes.py::test_a_read_only_output_is_one_line"),
)
