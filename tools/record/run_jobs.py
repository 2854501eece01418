#!/usr/bin/env python3
"""Run several recorder steps in one Python process (torch and transformers load once, which
takes longer than recording a small trace).

  python3 tools/record/run_jobs.py JOBS [--timings FILE] [--after SHELL-COMMAND]

JOBS has one job a line: a name, a tab, then the command exactly as it would be typed from the
repository root (`python3 tools/record/SCRIPT.py ARGS...`; SCRIPT is record, train_predictor,
test_record or report). Each runs through that script's main(argv), so the command recorded in a
trace's metadata is the standalone command. A job that fails is reported and stops the run
unless its name starts with "check". After each job: a line "name<TAB>seconds<TAB>ok|FAILED" is
appended to --timings, and --after runs (e.g. packing the results).
"""

import argparse
import importlib
import os
import shlex
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
SCRIPTS = ("record", "train_predictor", "test_record", "report")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jobs")
    ap.add_argument("--timings", help="append 'name, seconds, status' lines here")
    ap.add_argument("--after", help="shell command run after every job")
    a = ap.parse_args()
    jobs = []
    with open(a.jobs) as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            name, _, cmd = line.rstrip("\n").partition("\t")
            argv = shlex.split(cmd)
            if len(argv) < 2 or argv[0] != "python3" or not argv[1].startswith("tools/record/"):
                sys.exit(f"run_jobs.py: error: {a.jobs}:{n}: command must be 'python3 tools/record/SCRIPT.py ...'")
            script = os.path.splitext(os.path.basename(argv[1]))[0]
            if script not in SCRIPTS:
                sys.exit(f"run_jobs.py: error: {a.jobs}:{n}: script {argv[1]} is not one of {SCRIPTS}")
            jobs.append((name, script, argv[2:], cmd))
    failed = 0
    for name, script, argv, cmd in jobs:
        print(f"=== {name}: {cmd}", flush=True)
        t0 = time.time()
        try:
            rc = importlib.import_module(script).main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 - report and decide below
            traceback.print_exc()
            rc = 1
        rc = rc or 0
        secs = time.time() - t0
        status = "ok" if rc == 0 else f"FAILED rc={rc}"
        line = f"{name}\t{secs:.1f}\t{status}"
        print(line, flush=True)
        if a.timings:
            with open(a.timings, "a") as f:
                f.write(line + "\n")
        if a.after:
            subprocess.run(a.after, shell=True, check=False)
        if rc != 0:
            failed += 1
            if not name.startswith("check"):
                print(f"run_jobs.py: job {name} failed; stopping", file=sys.stderr)
                return 1
    print(f"run_jobs: {len(jobs) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
