"""Train the echo LSTM: `python train.py [overrides]`, e.g. `python train.py layers=5`.

Only Hydra and the config schema are imported up front: `--help`, `--cfg` and config errors answer fast. Every
failure a user can cause ends with one line and an exit code (echo_lstm/machinery/errors.py): 2 a bad setting,
checkpoint or dir, 3 training diverged, 4 a write failed, 5 a DDP process died, 130/143 stopped by Ctrl-C/SIGTERM.
"""

import os
import signal
import sys


def stopped_at_start(signum: int, frame: object) -> None:  # until cli.run takes over (imports take a moment)
    print("stopped by SIGINT; nothing was kept", file=sys.stderr, flush=True)
    os._exit(130)


signal.signal(signal.SIGINT, stopped_at_start)

import logging  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from echo_lstm.machinery import cli, rundir  # noqa: E402
from echo_lstm.machinery.config import register_configs, validate  # noqa: E402
from echo_lstm.machinery.distributed import RANK_OVERRIDES, is_launched_rank, is_secondary_rank  # noqa: E402
from echo_lstm.machinery.errors import LEAVES_NOTHING, ConfigError, EchoError, Stopped, report  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from echo_lstm.machinery import distributed
    from echo_lstm.machinery.sweeps.summary import JobResult

    distributed.entry_script = Path(__file__).resolve()  # what a DDP rank runs
    logging.captureWarnings(True)  # library warnings to train.log only (cli.NoLibraryWarnings), in a joblib worker too
    from echo_lstm.machinery import slurm

    if slurm.in_slurm_job():  # (an sbatch script's `srun python train.py`: submitit's launcher did it already)
        slurm.defer_signals()
    multirun, speaker = cli.is_multirun(), not is_secondary_rank()
    if multirun and speaker:
        if rundir.sweep is None and not slurm.in_slurm_job():  # a joblib worker (the sweep's own process claimed
            # the sweep dir). Not a SLURM job: its SIGTERM/USR1/USR2 are pre-emption, which requeues the job
            # (machinery/graceful_stop.py), not a stop of the sweep.
            from hydra.core.hydra_config import HydraConfig

            from echo_lstm.machinery.sweeps import stop

            stop.record_in_worker(Path(HydraConfig.get().sweep.dir))
        stopped = not_started()
        if stopped is not None:
            return stopped
    try:
        for warning in validate(cfg):
            if speaker:
                print(f"warning: {warning}", file=sys.stderr)
        from echo_lstm.machinery.run import say, summary_line, summary_lines
        from echo_lstm.training import train

        result = train(cfg)
        if speaker:
            if multirun:
                say(f"{cli.job_label()}: {summary_line(result, cfg)}")
            elif result.stop_reason == "already complete":
                say(f"echo-lstm: {result.run_dir} is already complete at step {result.step}: nothing to train")
            else:
                say("\n".join(summary_lines(result, cfg)))
        value = result.value(cfg.optimized_metric)
        return JobResult(value, result.metrics, step=result.step) if multirun else value
    except BrokenPipeError:  # `| head`: raised here, Hydra would print its own line about the job
        cli.reader_left()
    except EchoError as error:
        if multirun and isinstance(error, ConfigError):  # a refused job: its dir lies in the claimed sweep dir
            from hydra.core.hydra_config import HydraConfig

            from echo_lstm.machinery.rundir import SLURM_JOB

            job_dir = Path(HydraConfig.get().runtime.output_dir)
            if speaker and not (job_dir / SLURM_JOB).exists():  # (a requeued SLURM job's dir holds its run: kept)
                shutil.rmtree(job_dir, ignore_errors=True)
        elif not multirun and isinstance(error, LEAVES_NOTHING):
            release_claim()  # only what this run made, and nothing once it has written a checkpoint
        # A stopped job of a sweep is recorded and the jobs after it do not start; not in a SLURM job, where a stop
        # is pre-emption: the process ends (exit 128 + signal) and SLURM starts the requeued job again.
        if multirun and isinstance(error, Stopped) and speaker and not slurm.in_slurm_job():
            from hydra.core.hydra_config import HydraConfig

            from echo_lstm.machinery.sweeps import stop
            from echo_lstm.machinery.sweeps.summary import failed_value

            stop.request(Path(HydraConfig.get().sweep.dir), error.signum)
            job = rundir.jobs.get(str(HydraConfig.get().runtime.output_dir))
            if job is not None and not job.trained():  # stopped before its first checkpoint: nothing to keep
                job.release(remove=True)
            print(f"{cli.job_label()}: {error}", file=sys.stderr, flush=True)
            return JobResult(failed_value(), status="stopped", reason=str(error), exit_code=error.exit_code)
        if multirun and not isinstance(error, Stopped):  # the job fails; the sweep goes on
            print(f"{cli.job_label()} failed: {error}", file=sys.stderr, flush=True)
            return JobResult.failed(str(error), error.exit_code)
        sys.exit(report(error, quiet=not speaker))
    finally:
        if multirun:  # the job's dir was claimed as Hydra named it (rundir.claimed_job_dir): unlock it
            from hydra.core.hydra_config import HydraConfig

            job = rundir.jobs.pop(str(HydraConfig.get().runtime.output_dir), None)
            if job is not None:
                job.release()


def not_started() -> object:
    """A job of a sweep that was stopped (sweeps/stop.py) does not start: its dir is removed, it is recorded."""
    from hydra.core.hydra_config import HydraConfig

    from echo_lstm.machinery.sweeps import stop
    from echo_lstm.machinery.sweeps.summary import JobResult, failed_value

    hc = HydraConfig.get()
    signum = stop.requested(Path(hc.sweep.dir))
    if signum is None:
        return None
    job = rundir.jobs.pop(str(hc.runtime.output_dir), None)
    if job is not None:
        job.release(remove=True)  # (what this job made: Hydra's files; unlocked)
    return JobResult(failed_value(), status="not started", reason="the sweep was stopped before it",
                     exit_code=128 + signum)


def release_claim() -> None:
    """A refusal or a Ctrl-C before training: remove what this process added to its run dir, and a sweep dir that
    no job has used yet (a launcher that refused its settings: nothing was submitted)."""
    if is_secondary_rank():
        return
    if rundir.current is not None:
        rundir.current.release(remove=True)
    sweep = rundir.sweep
    if sweep is not None and sweep.path.is_dir():
        # Removed if no job used it (a launcher that refused its settings: nothing was submitted), or if no job
        # trained and none went to SLURM (a job's dir refused as Hydra named it): nothing to keep.
        unused = {p.name for p in sweep.path.iterdir()} <= {rundir.LOCK, "multirun.yaml", ".submitit"}
        trained = any(sweep.path.glob("*/checkpoints/last.ckpt"))
        sweep.release(remove=unused or not (trained or (sweep.path / ".submitit").exists()))


if __name__ == "__main__":
    from echo_lstm.machinery.resume import resumed_argv

    def secondary_argv(argv: list[str]) -> list[str]:  # a rank > 0 that srun started: no Hydra files, no log
        return [*argv, *(o for o in RANK_OVERRIDES if o != "hydra.mode=RUN")]

    prepare = None if is_launched_rank() else secondary_argv if is_secondary_rank() else resumed_argv
    cli.run(main, sys.argv[1:], prepare=prepare, on_failure=release_claim,
            about=__doc__.strip().splitlines()[0] + " See README.md.")
