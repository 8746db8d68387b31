"""Evaluate a trained checkpoint on fresh echo series: `python eval.py ckpt_path=<.ckpt file or run dir>`.

Prints a table of the metrics and writes them to `<output dir>/eval.json` (outputs/evals/<date>_<time>/); see
echo_lstm/machinery/evaluation.py for what each one measures. Only Hydra and the config schema are imported up front, so
`--help`, `--cfg` and config errors answer fast. Every mistake a user can make is one `error:` line with exit
code 2, and leaves no output dir behind.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from echo_lstm.machinery import cli, rundir
from echo_lstm.machinery.errors import EchoError, report
from echo_lstm.machinery.evaluation import refuse_multirun, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from echo_lstm.machinery.evaluation import evaluate, table, write

    try:
        result = evaluate(cfg)
        written = write(result, Path(HydraConfig.get().runtime.output_dir))
    except EchoError as error:  # here, not in cli.run: Hydra would add its own "Error executing job" line
        release_claim()  # an evaluation that did not finish has nothing worth keeping
        sys.exit(report(error))
    try:
        print(table(result, written), flush=True)
    except BrokenPipeError:  # `| head`: eval.json is written; nothing more to say
        cli.reader_left()


def release_claim() -> None:
    """A refusal or a Ctrl-C: remove the output dir this process claimed (it holds nothing of the user's)."""
    if rundir.current is not None:
        rundir.current.release(remove=True)


if __name__ == "__main__":
    cli.run(main, sys.argv[1:], prepare=refuse_multirun, on_failure=release_claim, config_name="eval",
            groups=("device",),
            about="eval.py: evaluate a trained checkpoint on fresh echo series; prints a table, writes eval.json.\n"
                  "  python eval.py ckpt_path=<.ckpt file or run dir> [key=value ...]  (device: one of conf/device/)")
