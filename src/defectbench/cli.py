"""The `defectbench` command: what the workflow has measured so far, table by table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from defectbench import paths
from defectbench.config import validate_config
from defectbench.experiments import CONFIG_DIR, load_experiments
from defectbench.io import load_yaml
from defectbench.plan import planned_runs


def status(config: Mapping[str, Any], workdir: Path = Path("."), config_dir: Path = CONFIG_DIR) -> list[dict]:
    """Per paper and table/figure: runs done (metrics.json present), missing (planned, not yet measured) and
    not selected (cells the config's experiments, datasets or units leave out)."""
    from defectbench.tables.spec import cells_by_output

    load_experiments(config_dir)  # schema errors first, with the file named
    planned = {(r.dataset, r.category, r.experiment) for r in planned_runs(config, config_dir)}
    rows = []
    for paper in config["papers"]:
        for output, cells in cells_by_output(config_dir / "tables" / f"{paper}.yaml").items():
            counts = {"done": 0, "missing": 0, "not selected": 0}
            for experiment, dataset, category in sorted(cells):
                if (dataset, category, experiment) not in planned:
                    counts["not selected"] += len(config["seeds"])
                    continue
                for seed in config["seeds"]:
                    run = {"dataset": dataset, "category": category, "experiment": experiment, "seed": seed}
                    measured = (workdir / paths.METRICS.format(**run)).exists()
                    counts["done" if measured else "missing"] += 1
            rows.append({"paper": paper, "output": output, **counts})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="defectbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    status_parser = commands.add_parser(
        "status", help="runs done / missing / not selected per table and figure"
    )
    status_parser.add_argument("--configfile", type=Path, default=Path("config/config.yaml"))
    status_parser.add_argument("--paper", action="append", help="only this paper (repeatable)")
    args = parser.parse_args(argv)
    try:
        config = load_yaml(args.configfile.read_text())
        validate_config(config)
    except (OSError, yaml.YAMLError, ValueError) as err:
        print(f"defectbench: cannot read {args.configfile}: {err}", file=sys.stderr)
        return 2
    if args.paper:
        config = {**config, "papers": [p for p in config["papers"] if p in args.paper]}
    rows = status(config)
    width = max((len(f"{r['paper']} {r['output']}") for r in rows), default=10)
    print(f"{'table / figure':<{width}}  {'done':>5}  {'missing':>7}  {'not selected':>12}")
    for r in rows:
        name = f"{r['paper']} {r['output']}"
        print(f"{name:<{width}}  {r['done']:>5}  {r['missing']:>7}  {r['not selected']:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
