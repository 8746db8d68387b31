"""When does a run learn the echo, across CPU kernels and seeds? The table of docs/research.md ("How robust").

    python benchmarks/learning_spread.py                                   # the default run, 8 seeds, 4 machines
    python benchmarks/learning_spread.py --seeds 1234 1 2 --machines portable avx2 -- experiment=tutorial_part4

torch picks its CPU kernels at start-up, in two places: ATen's own (`ATEN_CPU_CAPABILITY`: default, avx2, avx512)
and oneDNN's (`ONEDNN_MAX_CPU_ISA`: SSE41, AVX2, AVX512_CORE), each the best the CPU has unless capped. They round
differently, so the same seed follows another trajectory on another CPU: an AVX2-only CPU runs both at AVX2, an
AVX-512 CPU both at AVX-512. A "machine" below is such a pair, emulated by capping both on one CPU (a cap above
what the CPU has falls back; the table says what torch ran). Each machine runs in a process of its own (both are
read once, at start-up), each seed is one `train(cfg)` of the app's config with the overrides given, and the
table is the step at which the echo was learned (`train/steps_to_echo`), or `-` if it was not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MACHINES = {  # name: (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)
    "avx512": ("avx512", "AVX512_CORE"),  # an AVX-512 CPU (Intel Xeon, AMD Zen 4)
    "avx2": ("avx2", "AVX2"),  # an AVX2 CPU (most laptops, AMD Zen 2/3)
    "portable": ("default", "SSE41"),  # torch's portable kernels on both sides
    "aten-default": ("default", "AVX2"),  # ATEN_CPU_CAPABILITY=default alone, on an AVX2 CPU
}
QUIET = ["trainer.enable_progress_bar=false", "figure.every_n_steps=0", "logger=none"]


def one_kernel(seeds: list[int], overrides: list[str]) -> None:
    """Child: every seed under this process's kernel; one JSON line per seed on stdout."""
    import torch
    from hydra import compose, initialize_config_dir

    from echo_lstm.machinery.config import register_configs, validate
    from echo_lstm.training import train

    torch.set_num_threads(1)
    register_configs()
    kernel = f"{torch.backends.cpu.get_cpu_capability()}/{os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}"
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for seed in seeds:
            cfg = compose("train", [*QUIET, *overrides, f"seed={seed}", f"run_dir={tmp}/{seed}"])
            validate(cfg)
            result = train(cfg)
            print(json.dumps({"kernel": kernel, "seed": seed, "reached": result.reached, "step": result.step,
                              "boundary_acc": result.metrics.get("train/boundary_acc")}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2, 3, 4, 5, 6, 7])
    parser.add_argument("--machines", nargs="+", default=list(MACHINES), choices=list(MACHINES))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="the app's overrides, after --")
    args = parser.parse_args()
    if args.child:
        return one_kernel(args.seeds, args.overrides)
    rows = []
    for machine in args.machines:
        aten, onednn = MACHINES[machine]
        env = {**os.environ, "ATEN_CPU_CAPABILITY": aten, "ONEDNN_MAX_CPU_ISA": onednn}
        cmd = [sys.executable, __file__, "--child", "--seeds", *map(str, args.seeds), "--", *args.overrides]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            sys.exit(f"{machine}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        got = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if got and got[0]["kernel"].split("/")[0].lower() != aten:  # torch falls back when the CPU lacks it
            print(f"{machine}: not on this CPU (torch ran {got[0]['kernel']}); skipped", file=sys.stderr)
            continue
        rows += [{**row, "machine": machine} for row in got]
    print(f"overrides: {' '.join(args.overrides) or '(defaults)'}")
    print("| machine (ATen/oneDNN) | " + " | ".join(f"seed {s}" for s in args.seeds) + " | median | max |")
    print("|---" * (len(args.seeds) + 3) + "|")
    for machine in dict.fromkeys(r["machine"] for r in rows):
        steps = [r["reached"] for r in rows if r["machine"] == machine]
        kernel = next(r["kernel"] for r in rows if r["machine"] == machine)
        learned = [s for s in steps if s is not None]
        median = f"{statistics.median(learned):g}" if len(learned) == len(steps) else "-"
        worst = max(learned) if len(learned) == len(steps) else "-"
        cells = " | ".join("-" if s is None else str(s) for s in steps)
        print(f"| {machine} ({kernel}) | {cells} | {median} | {worst} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
