"""Check the guards: put a known bug into a scratch copy of the code, run the tests that must catch it, report.

    python tests/mutants.py [name ...]      # all by default; one JSON line per bug: the tests that failed

Each bug is (file, the code, the code with the bug, the tests that must fail). The copy goes to a temp dir, first
on PYTHONPATH, so the installed package is not touched. tests/README.md lists the results.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTANTS = {
    "reset-state-every-chunk": ("src/echo_lstm/models/module.py",
        "logits, hidden = net.run(inputs[k], hidden if carry else None)",
        "logits, hidden = net.run(inputs[k], None)",
        ["tests/test_model.py::test_training_step_carries_the_state_from_chunk_to_chunk_detached",
         "tests/test_learning.py::test_carried_state_is_what_learns_the_boundary_while_training"]),
    "no-detach-in-training-step": ("src/echo_lstm/models/module.py",
        "            hidden = net.detach(hidden)\n",
        "",
        ["tests/test_model.py::test_training_step_carries_the_state_from_chunk_to_chunk_detached"]),
    "validation-from-training-state": ("src/echo_lstm/models/module.py",
        "        logits, _ = self.net(x, None)\n",
        "        logits, _ = self.net(x, self.train_state)\n",
        ["tests/test_model.py::test_validation_starts_from_a_zero_state_whatever_the_training_state"]),
    "early-stopping-on-max": ("src/echo_lstm/models/module.py",
        'metrics["val/min_acc"] = torch.minimum(metrics["val/acc"], metrics["val/boundary_acc"])',
        'metrics["val/min_acc"] = torch.maximum(metrics["val/acc"], metrics["val/boundary_acc"])',
        ["tests/test_model.py::test_early_stopping_needs_both_accuracies_at_the_target"]),
    "second-ctrl-c-waits": ("src/echo_lstm/machinery/graceful_stop.py",
        "            os._exit(128 + signum)  # second Ctrl-C: no more waiting",
        "            pass  # second Ctrl-C ignored",
        ["tests/test_resume.py::test_second_ctrl_c_exits_at_once"]),
    "carried-state-not-kept": ("src/echo_lstm/models/module.py",
        "        self.train_state = net.pack(hidden)\n",
        "",
        ["tests/test_model.py::test_training_step_carries_the_state_from_chunk_to_chunk_detached",
         "tests/test_resume.py::test_checkpoints_load_weights_only"]),
    "a-non-empty-dir-is-claimed": ("src/echo_lstm/machinery/rundir.py",
        "                if any(candidate.iterdir()):\n",
        "                if False:\n",
        ["tests/test_safety.py::test_a_refused_run_never_touches_an_existing_dir"]),
    "no-lock": ("src/echo_lstm/machinery/rundir.py",
        "        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n",
        "        pass\n",
        ["tests/test_safety.py::test_a_run_in_use_cannot_be_resumed_and_a_dead_runs_lock_is_taken_over"]),
    "stored-overrides-unchecked": ("src/echo_lstm/machinery/resume.py",
        "    groups = config_groups()\n    parsed =",
        "    return\n    groups = config_groups()\n    parsed =",
        ["tests/test_safety.py::test_resume_refuses_stored_overrides_that_are_not_plain_settings"]),
    "no-figure-at-the-final-step": ("src/echo_lstm/callbacks/echo_figure.py",
        "        if self._pool is not None and self._chunk is not None and step > self._last_step:",
        "        if False:",
        ["tests/test_research.py::test_figure_at_a_steady_cadence_and_at_the_final_step"]),
    # issue 19: TensorBoard that tells the story (tests/test_tensorboard.py)
    "hparams-overrides-not-first": ("src/echo_lstm/machinery/loggers.py",
        "        info.differs = info.name in first\n",
        "        pass\n",
        ["tests/test_tensorboard.py::test_hparams_table_leads_with_the_overridden_keys"]),
    "steps-to-echo-one-point": ("src/echo_lstm/callbacks/steps_to_echo.py",
        "                logger.log_metrics({self.name: float(self.reached_at)}, step=0)",
        "                pass",
        ["tests/test_tensorboard.py::test_steps_to_echo_is_a_line_and_a_text_card"]),
    "figure-text-tiny": ("src/echo_lstm/machinery/viz/echo_figure.py",
        "        self.font = _font(max(8, round(min(self.width / 26, self.height / 18))))",
        "        self.font = _font()",
        ["tests/test_tensorboard.py::test_the_figure_is_legible_on_tensorboards_card"]),
    "ties-not-ranked-by-steps": ("src/echo_lstm/machinery/sweeps/summary.py",
        "        return (r.status != \"completed\", missing, score, steps, r.job)",
        "        return (r.status != \"completed\", missing, score, r.job)",
        ["tests/test_research.py::test_summary_ranks_ties_by_fewer_steps_to_echo"]),
    "checkpoint-before-its-validation": ("src/echo_lstm/machinery/checkpoint.py",
        "        if not compat.validation_follows(trainer):\n",
        "        if True:\n",
        ["tests/test_resume.py::test_a_checkpoint_at_a_validation_step_is_written_after_that_validation"]),
    "refusal-removes-the-users-dir": ("src/echo_lstm/machinery/rundir.py",
        "            if self.created:\n",
        "            if True:\n",
        ["tests/test_safety.py::test_an_empty_dir_the_user_named_is_used_and_on_refusal_emptied_not_removed"]),
    "library-warnings-on-the-console": ("conf/hydra/job_logging/echo.yaml",
        "    filters: [no_library_warnings]\n",
        "",
        ["tests/test_train_e2e.py::test_library_warnings_go_to_train_log_not_the_console"]),
    "library-warnings-in-joblib-workers": ("train.py",
        "    logging.captureWarnings(True)  # library warnings",
        "    pass  # library warnings",
        ["tests/test_research.py::test_joblib_sweep_runs_in_parallel_with_one_line_per_job_and_figures"]),
    # issue 17: a stranger's run dir or checkpoint is data, never instructions (tests/test_adversarial.py)
    "foreign-callback-paths-kept": ("src/echo_lstm/machinery/resume.py",
        "        if not fine:\n",
        "        if False:\n",
        ["tests/test_adversarial.py::test_foreign_callback_paths_are_dropped_and_own_ones_kept"]),
    "checkpoint-removal-unchecked": ("src/echo_lstm/machinery/checkpoint.py",
        "            os.unlink(path)\n",
        "            os.unlink(path)\n        else:\n            super().remove_checkpoint(path)\n",
        ["tests/test_adversarial.py::test_checkpoint_io_deletes_only_regular_checkpoint_files_of_its_run"]),
    "checkpoint-paths-trusted": ([  # both guards off: Lightning's own restore and recursive delete
        ("src/echo_lstm/machinery/resume.py", "        if not fine:\n", "        if False:\n"),
        ("src/echo_lstm/machinery/checkpoint.py", "            os.unlink(path)\n",
         "            os.unlink(path)\n        else:\n            super().remove_checkpoint(path)\n")],
        # (test_a_checkpoint_from_elsewhere_starts_a_new_run_without_its_paths passes under it, as it did when the
        # mutant was added: only the [dotdot] case, the one that deletes the user's tree, catches it)
        ["tests/test_adversarial.py::test_crafted_checkpoint_state_never_deletes_outside_the_run[dotdot]"]),
    "run-dir-links-followed": ("src/echo_lstm/machinery/rundir.py",
        "    for top, dirs, files in os.walk(path, followlinks=False):\n",
        "    for top, dirs, files in []:\n",
        ["tests/test_adversarial.py::test_a_run_dir_with_links_is_refused_untouched"]),
    "write-through-links": ("src/echo_lstm/machinery/rundir.py",
        "        os.replace(tmp, path)\n",
        "        open(path, 'wb').write(data.encode() if isinstance(data, str) else data)\n",
        ["tests/test_adversarial.py::test_write_file_replaces_links_and_never_writes_through_them"]),
    "preflight-errors-swallowed": ("src/echo_lstm/machinery/preflight.py",  # before: only the app's errors escaped
        "            raise Escaped(error) from None\n",
        "            raise (Escaped(error) if type(error).__name__ == 'ConfigError' else error) from None\n",
        ["tests/test_adversarial.py::test_an_error_hydra_would_swallow_leaves_an_existing_run_untouched",
         "tests/test_adversarial.py::test_the_preflight_carries_any_exception_past_hydra"]),
    "plain-value-nodes-unchecked": ("src/echo_lstm/machinery/config.py",
        "    check_nodes(cfg)\n",
        "",
        ["tests/test_adversarial.py::test_failures_before_the_run_are_one_line_and_leave_nothing"]),
    "optimizer-state-unchecked": ("src/echo_lstm/machinery/resume.py",
        "        check_optimizer_state(ckpt[\"optimizer_states\"], optimizer, key, path)\n",
        "        pass\n",
        ["tests/test_adversarial.py::test_failures_before_the_run_are_one_line_and_leave_nothing"]),
    "finished-run-resumable": ("src/echo_lstm/machinery/resume.py",
        "    if (run / RESULT).is_file() and not any(",
        "    if False and not any(",
        ["tests/test_adversarial.py::test_a_finished_run_is_read_only_to_resume"]),
    "job-dirs-unclaimed": ("src/echo_lstm/machinery/preflight.py",
        "hydra_quote('${claimed_job_dir:' + str(subdir) + '}')",
        "hydra_quote(str(subdir))",
        ["tests/test_adversarial.py::test_jobs_that_would_share_a_dir_or_leave_the_sweep_are_refused",
         "tests/test_adversarial.py::test_a_running_sweep_job_cannot_be_resumed_beside_itself"]),
    "output-subdir-unchecked": ("src/echo_lstm/machinery/preflight.py",
        "        rundir.safe_subdir(value, \"hydra.output_subdir\")\n",
        "        pass\n",
        ["tests/test_adversarial.py::test_hydra_files_never_go_outside_the_run_dir"]),
    "sweep-ctrl-c-exits-at-once": ("src/echo_lstm/machinery/cli.py",  # before: the parent exited, workers orphaned
        "        if rundir.sweep is not None:  # a sweep",
        "        if False:  # a sweep",
        ["tests/test_adversarial.py::test_ctrl_c_of_a_parallel_sweep_ends_every_worker_and_says_what_was_kept"]),
    "failed-trial-nan-to-optuna": ("src/echo_lstm/machinery/sweeps/summary.py",
        "        return cls(failed_value(), status=",
        "        return cls(math.nan, status=",
        ["tests/test_adversarial.py::test_a_failed_optuna_trial_is_recorded_and_the_search_goes_on"]),
    "resume-of-a-trial-searches-again": ("src/echo_lstm/machinery/resume.py",
        '("resume", "ckpt_path", "hparams_search")]',
        '("resume", "ckpt_path")]',
        ["tests/test_adversarial.py::test_ctrl_c_of_an_optuna_search_stops_it_and_its_trial_resumes_alone"]),
    "epoch-counters-lag-after-a-restore": ("src/echo_lstm/models/module.py",
        "        compat.mark_epoch_in_progress(checkpoint)",
        "        pass",
        ["tests/test_resume.py::test_stops_at_an_epochs_last_batch_then_inside_the_next_epoch_continue_exactly"]),
    # SLURM (tests/test_slurm.py needs a cluster: sudo .ci/slurm-up.sh)
    "ranks-run-their-config-s-multirun": ("src/echo_lstm/machinery/distributed.py",
        'RANK_OVERRIDES = ("hydra.mode=RUN", ',
        'RANK_OVERRIDES = (',
        ["tests/test_devices.py::test_ranks_of_a_job_whose_config_asks_for_a_multirun_run_only_their_job"]),
    "requeued-job-starts-from-zero": ("src/echo_lstm/machinery/resume.py",
        '        key, path, in_place = "hydra.run.dir", run_dir / LAST, True\n',
        '        return Start()\n',
        ["tests/test_safety.py::test_a_slurm_jobs_run_dir_is_continued_only_by_that_job_when_requeued",
         "tests/test_slurm.py::test_a_preempted_job_continues_exactly_where_it_stopped[scontrol-requeue]"]),
    "foreign-checkpoint-continued": ("src/echo_lstm/machinery/resume.py",
        'if key == "hydra.run.dir" and ckpt.get("echo_slurm_job") != os.environ.get("SLURM_JOB_ID"):',
        'if False:',
        ["tests/test_safety.py::test_a_slurm_jobs_run_dir_is_continued_only_by_that_job_when_requeued",
         "tests/test_slurm.py::test_a_requeued_job_whose_checkpoint_is_foreign_is_refused"]),
    "usr1-usr2-not-taken": ("src/echo_lstm/machinery/graceful_stop.py",
        "(signal.SIGUSR1, signal.SIGUSR2) if",
        "() if",
        ["tests/test_slurm.py::test_a_preempted_job_continues_exactly_where_it_stopped[USR2]",
         "tests/test_slurm.py::test_a_preempted_job_continues_exactly_where_it_stopped[USR1]"]),
    "early-warning-dropped": ("src/echo_lstm/machinery/graceful_stop.py",
        "            self.signal, slurm.early = slurm.early, None",
        "            slurm.early = None",
        ["tests/test_slurm.py::test_a_preempted_job_continues_exactly_where_it_stopped[USR2-at-start]"]),
    "cpu-job-asks-for-gpus": ("src/echo_lstm/machinery/config.py",
        'return devices if accelerator in ("gpu", "cuda") else None',
        'return devices',
        ["tests/test_devices.py::test_submitit_slurm_config_matches_the_device",
         "tests/test_slurm.py::test_the_readme_sweep_runs_on_cpu_with_no_gpu_request"]),
    "one-shape-per-sweep": ("src/hydra_plugins/echo_lstm_slurm/launcher.py",
        "        if len(set(shapes)) == 1:",
        "        if True:",
        ["tests/test_slurm.py::test_a_sweep_over_devices_shapes_each_job_and_ddp_equals_a_local_run"]),
    "srun-rank-1-speaks": ("src/echo_lstm/machinery/distributed.py",
        "    return is_launched_rank() or external_rank() > 0",
        "    return is_launched_rank()",
        ["tests/test_slurm.py::test_a_sweep_over_devices_shapes_each_job_and_ddp_equals_a_local_run"]),
    # issue 19: one home per setting, template conventions (tests/test_config_errors.py, tests/test_template.py)
    "constructor-types-unchecked": ("src/echo_lstm/machinery/config.py",
        '            check(wrong is None, f"{key}.{name}"',
        '            check(True, f"{key}.{name}"',
        ["tests/test_config_errors.py::test_bad_setting_is_one_line_naming_it[+data.noise=0.1]",
         "tests/test_config_errors.py::test_bad_setting_is_one_line_naming_it[model.net.state_size=abc]"]),
    "layers-has-two-homes": ("src/echo_lstm/machinery/config.py",
        '    if "layers" in net and net["layers"] != "${layers}":',
        '    if False:',
        ["tests/test_config_errors.py::test_bad_setting_is_one_line_naming_it[model.net.layers=5]"]),
    "net-range-unchecked": ("src/echo_lstm/models/net.py",
        '        check(state_size >= 1, "state_size", state_size, "must be an integer >= 1")\n',
        '',
        ["tests/test_config_errors.py::test_bad_setting_is_one_line_naming_it[model.net.state_size=0]"]),
    "refusal-not-named-in-full": ("src/echo_lstm/machinery/run.py",
        "raise ConfigError(setting(key, node, error.key), error.value, error.allowed)",
        "raise ConfigError(error.key, error.value, error.allowed)",
        ["tests/test_config_errors.py::test_bad_setting_is_one_line_naming_it[data.batch_size=0]"]),
    "fractions-passed-to-lightning": ("src/echo_lstm/training.py",
        "        if isinstance(args.get(key), float) and 0 < args[key] < 1:",
        "        if False:",
        ["tests/test_template.py::test_template_spelling_of_limits[trainer.limit_val_batches=0.1]"]),
    "setup-needs-a-stage": ("src/echo_lstm/data/echo.py",
        "    def setup(self, stage: str | None = None) -> None:",
        "    def setup(self, stage: str) -> None:",
        ["tests/test_template.py::test_echo_datamodule[2]"]),
    "model-config-not-instantiable": ("conf/model/lstm.yaml",
        "_recursive_: false",
        "_recursive_: true",
        ["tests/test_template.py::test_train_config[model]"]),
    "template-spelling-unexplained": ("src/echo_lstm/machinery/cli.py",
        '            hint = f" (the device is its own group here: {device})" if device else ""',
        '            hint = ""',
        ["tests/test_template.py::test_template_spelling_of_the_trainer_group[trainer=gpu]"]),
    "view-without-event-files": ("src/echo_lstm/machinery/run.py",
        '    if any(result.run_dir.glob("events.out.tfevents.*")):',
        '    if True:',
        ["tests/test_conventions.py::test_the_summary_offers_tensorboard_only_when_it_has_event_files[csv-False]"]),
}

def run(name):
    *edits, tests = MUTANTS[name]
    if isinstance(edits[0], str):  # one edit: (file, old, new, tests); several: ([(file, old, new), ...], tests)
        edits = [tuple(edits)]
    else:
        edits = edits[0]
    scratch = Path(tempfile.mkdtemp(prefix=f"mutant-{name}-"))
    shutil.rmtree(scratch)
    shutil.copytree(REPO, scratch, ignore=shutil.ignore_patterns(".venv*", "outputs", ".git", "*.egg-info",
                                                                  "__pycache__"))
    for path, old, new in edits:
        target = scratch / path
        text = target.read_text()
        assert old in text, (name, old)
        target.write_text(text.replace(old, new, 1))
    env = {**os.environ, "PYTHONPATH": str(scratch / "src")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *tests],
                          cwd=scratch, env=env, capture_output=True, text=True, timeout=900)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    shutil.rmtree(scratch, ignore_errors=True)
    return {"mutant": name, "exit": proc.returncode, "summary": last, "failed": failed}

if __name__ == "__main__":
    names = sys.argv[1:] or list(MUTANTS)
    for n in names:
        print(json.dumps(run(n)), flush=True)
