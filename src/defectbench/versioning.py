"""Bring a DVC-versioned state of the results into the workspace so that Snakemake accepts it as up to date.

DVC restores file contents, not modification times: after `dvc pull` every product is as new as the moment it
was written back, in no particular order, and Snakemake would re-run whatever looks older than its inputs. The
contents, though, are known to be right: `dvc status` compares every product, and the code and config the stage
depends on, with the hashes in dvc.lock (written when the workflow made them). Only then `snakemake --touch`
stamps the outputs in the order of the DAG and records each job's current settings in Snakemake's metadata
(a stale record from a later version would otherwise count as a changed setting). A final dry run must plan
nothing; if it plans jobs, the pulled version was incomplete and the jobs are named.

Usage: `python -m defectbench.versioning [--no-pull]` (`make pull`), after `git checkout <commit>` if wanted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from defectbench.io import load_yaml

DVC_FILE = Path("dvc.yaml")
STAGE = "reproduce"


class VersionError(RuntimeError):
    """The workspace does not hold a complete, verified version of the results."""


def _run(tool: str, *args: str, capture: bool = False) -> str:
    """Run DVC or Snakemake with this interpreter (the same environment as the stage's)."""
    command = [sys.executable, "-m", tool, *args]
    result = subprocess.run(
        command, text=True, capture_output=capture, env={**os.environ, "DVC_NO_ANALYTICS": "1"}
    )
    if result.returncode != 0:
        details = (result.stdout or "") + (result.stderr or "") if capture else ""
        raise VersionError(f"`{tool} {' '.join(args)}` failed (exit {result.returncode})\n{details[-4000:]}")
    return result.stdout or ""


def stage_configfile(dvc_file: Path = DVC_FILE) -> str:
    """The config file the DVC stage runs the workflow with (its `configfile` var): the touch must use the same."""
    spec = load_yaml(dvc_file.read_text())
    for entry in spec.get("vars", []):
        if isinstance(entry, dict) and "configfile" in entry:
            return str(entry["configfile"])
    raise VersionError(f"{dvc_file} defines no `configfile` var for the stage {STAGE!r}")


def verified_status() -> None:
    """Raise unless every product and every dependency of the stage matches dvc.lock."""
    changes = json.loads(_run("dvc", "status", "--json", STAGE, capture=True) or "{}")
    if changes:
        raise VersionError(
            "the workspace differs from dvc.lock, so its results were not made by this code and config:\n"
            f"{json.dumps(changes, indent=2)}\nrun `dvc pull` (or `dvc checkout`), or `dvc repro` to remake them"
        )


def planned_jobs(configfile: str) -> list[str]:
    """The jobs a dry run would execute (empty when everything is up to date)."""
    output = _run("snakemake", "-n", "--cores", "1", "--configfile", configfile, capture=True)
    return [
        line.split()[1].rstrip(":")
        for line in output.splitlines()
        if line.startswith(("rule ", "localrule "))
    ]


def restore(pull: bool = True) -> None:
    """`dvc pull`, verify against dvc.lock, stamp the outputs in DAG order; raise if anything is left to run."""
    configfile = stage_configfile()
    if pull:
        _run("dvc", "pull", STAGE)
    verified_status()
    _run("snakemake", "--touch", "--cores", "1", "--configfile", configfile, capture=True)
    left = planned_jobs(configfile)
    if left:
        raise VersionError(
            f"the pulled version lacks outputs of {len(left)} jobs ({', '.join(sorted(set(left)))}); it was "
            "committed from an incomplete run: run `dvc repro` to complete it"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-pull", action="store_true", help="files already checked out (dvc checkout)")
    args = parser.parse_args(argv)
    try:
        restore(pull=not args.no_pull)
    except VersionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("results restored from dvc.lock; snakemake has nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
