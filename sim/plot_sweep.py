#!/usr/bin/env python3
"""Plot TPOT against expert cache budget from a `moesched-sim sweep` CSV.

Usage:
    plot_sweep.py CSV -o OUT [--title TEXT] [--log-y]

    plot_sweep.py sweep.csv -o tpot.png
    plot_sweep.py sweep.csv -o tpot.svg --title "Mixtral, PCIe 4" --log-y

The CSV has one row per (grid point, policy). One line is drawn per policy
(mean TPOT in ms against cache_gb); the `lower-bound` row is drawn as a
dashed black line. When the sweep covers more than one combination of
bandwidth, gamma, acceptance and batch, one subplot is drawn per
combination (at most 3 columns). The output format follows the extension
of OUT: .png or .svg. SVG output is byte-identical across runs.

Exit codes: 0 success, 2 bad input or output, 3 matplotlib missing.
Needs Python 3 and matplotlib (Debian: apt-get install python3-matplotlib).
"""

import argparse
import csv
import math
import sys
from pathlib import Path

PROG = "plot_sweep.py"
DEFAULT_TITLE = "TPOT against expert cache budget"
LOWER_BOUND = "lower-bound"
FORMATS = (".png", ".svg")
MAX_COLUMNS = 3
PNG_DPI = 150
# Columns the plot reads; the sweep writes more, which are ignored.
REQUIRED_COLUMNS = (
    "policy",
    "cache_gb",
    "bandwidth_gbps",
    "gamma",
    "acceptance",
    "batch",
    "tpot_ms_mean",
)
NUMERIC_COLUMNS = REQUIRED_COLUMNS[1:]
# acceptance is empty when speculative decoding is off (gamma 0).
MAY_BE_EMPTY = ("acceptance",)
EXIT_BAD_INPUT = 2
EXIT_NO_MATPLOTLIB = 3
NO_MATPLOTLIB = (
    f"{PROG}: matplotlib is not installed "
    "(Debian: apt-get install python3-matplotlib)"
)


class InputError(Exception):
    """A problem with the command line, the CSV or the output file."""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Plot TPOT (mean, ms) against expert cache budget (GB), "
        "one line per policy, from the CSV written by `moesched-sim sweep`.",
    )
    parser.add_argument("csv", metavar="CSV", help="sweep CSV to read")
    parser.add_argument(
        "-o", "--output", metavar="OUT", required=True,
        help="image to write; the extension picks the format (.png or .svg)",
    )
    parser.add_argument(
        "--title", default=DEFAULT_TITLE,
        help=f'figure title (default: "{DEFAULT_TITLE}")',
    )
    parser.add_argument(
        "--log-y", action="store_true",
        help="use a logarithmic TPOT axis",
    )
    return parser.parse_args(argv)


def output_format(path):
    """Return "png" or "svg" for the output path, or raise InputError."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        shown = f"'{suffix}'" if suffix else "(none)"
        raise InputError(
            f"{path}: unsupported output extension {shown}; use .png or .svg"
        )
    return suffix[1:]


def parse_number(text, column, where):
    """Parse one numeric cell; empty is allowed only in MAY_BE_EMPTY."""
    if text == "" and column in MAY_BE_EMPTY:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(
            f"{where}: column '{column}' has non-numeric value '{text}'"
        )
    return value


def check_header(fieldnames):
    if not fieldnames:
        raise InputError("file is empty (no header row)")
    for column in REQUIRED_COLUMNS:
        if column not in fieldnames:
            raise InputError(f"missing required column '{column}'")


def parse_row(raw, where, width):
    """Turn one csv.DictReader row into a dict of the required columns."""
    if None in raw:
        raise InputError(f"{where}: more fields than the {width} in the header")
    if None in raw.values():
        raise InputError(f"{where}: fewer fields than the {width} in the header")
    row = {"policy": raw["policy"].strip()}
    if not row["policy"]:
        raise InputError(f"{where}: column 'policy' is empty")
    for column in NUMERIC_COLUMNS:
        row[column] = parse_number(raw[column].strip(), column, where)
    return row


def read_rows(path):
    """Read and validate the sweep CSV; raise InputError on any problem."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            fieldnames = [name.strip() for name in reader.fieldnames or []]
            check_header(fieldnames)
            reader.fieldnames = fieldnames
            rows = []
            for row_no, raw in enumerate(reader, start=1):
                where = f"row {row_no} (line {reader.line_num})"
                rows.append(parse_row(raw, where, len(fieldnames)))
    except FileNotFoundError:
        raise InputError("no such file") from None
    except IsADirectoryError:
        raise InputError("is a directory, not a CSV file") from None
    except UnicodeDecodeError:
        raise InputError("is not UTF-8 text") from None
    except csv.Error as err:
        raise InputError(f"malformed CSV: {err}") from None
    except OSError as err:
        raise InputError(err.strerror or str(err)) from None
    if not rows:
        raise InputError("no data rows (only a header)")
    return rows


def combination_of(row):
    """The grid point apart from the cache budget; acceptance is moot at gamma 0."""
    acceptance = row["acceptance"] if row["gamma"] else 0.0
    return (row["bandwidth_gbps"], row["gamma"], acceptance, row["batch"])


def combination_label(combination):
    bandwidth, gamma, acceptance, batch = combination
    parts = [f"bw {bandwidth:g} GB/s"]
    if gamma:
        parts += [f"gamma {gamma:g}", f"acc {acceptance:g}"]
    parts.append(f"batch {batch:g}")
    return ", ".join(parts)


def group_series(rows):
    """Return {combination: {policy: [(cache_gb, tpot), ...] sorted by cache}}."""
    groups = {}
    for row in rows:
        series = groups.setdefault(combination_of(row), {})
        points = series.setdefault(row["policy"], {})
        cache = row["cache_gb"]
        if cache in points:
            raise InputError(
                f"two rows for policy '{row['policy']}' at cache_gb {cache:g} "
                f"({combination_label(combination_of(row))})"
            )
        points[cache] = row["tpot_ms_mean"]
    return {
        combination: {
            policy: sorted(points.items()) for policy, points in series.items()
        }
        for combination, series in sorted(groups.items())
    }


def policy_order(rows):
    """Policies in order of first appearance, lower bound last."""
    order = list(dict.fromkeys(row["policy"] for row in rows))
    if LOWER_BOUND in order:
        order.remove(LOWER_BOUND)
        order.append(LOWER_BOUND)
    return order


def policy_styles(policies, color_cycle):
    """Same colour for a policy in every subplot; lower bound dashed black."""
    styles = {}
    drawn = [policy for policy in policies if policy != LOWER_BOUND]
    for index, policy in enumerate(drawn):
        color = color_cycle[index % len(color_cycle)]
        styles[policy] = {"color": color, "marker": "o", "label": policy}
    styles[LOWER_BOUND] = {
        "color": "black", "linestyle": "--", "marker": "o",
        "label": "lower bound",
    }
    return styles


def load_pyplot():
    """Import matplotlib with the Agg backend; exit 3 when it is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        print(NO_MATPLOTLIB, file=sys.stderr)
        sys.exit(EXIT_NO_MATPLOTLIB)
    matplotlib.rcParams["svg.hashsalt"] = "moesched"
    return matplotlib, pyplot


def draw_axes(ax, series, policies, styles, log_y):
    for policy in policies:
        if policy not in series:
            continue
        caches, tpots = zip(*series[policy])
        ax.plot(caches, tpots, **styles[policy])
    ax.set_xlabel("expert cache (GB)")
    ax.set_ylabel("TPOT (ms)")
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def make_figure(pyplot, groups, policies, styles, title, log_y):
    count = len(groups)
    ncols = min(MAX_COLUMNS, count)
    nrows = math.ceil(count / ncols)
    fig, axes = pyplot.subplots(
        nrows, ncols, figsize=(5.0 * ncols, 3.8 * nrows + 0.6),
        squeeze=False, constrained_layout=True,
    )
    flat = [ax for line in axes for ax in line]
    for ax, (combination, series) in zip(flat, groups.items()):
        draw_axes(ax, series, policies, styles, log_y)
        if count > 1:
            ax.set_title(combination_label(combination), fontsize="medium")
    for ax in flat[count:]:
        ax.set_visible(False)
    if count > 1:
        fig.suptitle(title)
    else:
        flat[0].set_title(title)
    return fig


def save_figure(fig, path, fmt):
    """Write without timestamps or version strings, so output is reproducible."""
    if fmt == "svg":
        options = {"metadata": {"Date": None}}
    else:
        options = {"metadata": {"Software": None}, "dpi": PNG_DPI}
    try:
        fig.savefig(path, format=fmt, **options)
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror or err}") from None


def main(argv=None):
    args = parse_args(argv)
    try:
        fmt = output_format(args.output)
        try:
            rows = read_rows(args.csv)
            groups = group_series(rows)
        except InputError as err:
            raise InputError(f"{args.csv}: {err}") from None
        matplotlib, pyplot = load_pyplot()
        policies = policy_order(rows)
        colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        styles = policy_styles(policies, colors)
        fig = make_figure(pyplot, groups, policies, styles, args.title, args.log_y)
        try:
            save_figure(fig, args.output, fmt)
        except InputError as err:
            raise InputError(f"{args.output}: {err}") from None
        pyplot.close(fig)
    except InputError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
