"""glm-monitor: watch training runs -- a live loss-spike dashboard, a spike table for cron/alerting,
and a self-contained HTML report.

    glm-monitor serve RUN [RUN ...] [--host 127.0.0.1] [--port 8750]
    glm-monitor spikes RUN [--json] [--fail-on-spike]
    glm-monitor report RUN [RUN ...] -o report.html

RUN is a run directory written by ``glm-train`` (metrics.jsonl, events.jsonl, config.yaml) or a
Megatron-LM text log file. Exit codes: 0 fine; 1 spikes found with --fail-on-spike; 2 bad input or
usage (missing run, no metrics recognised in it, unwritable output, a port in use). --verbose goes
before or after the subcommand. The spike rule is the trainer's (megatron_glm.metrics.spikes).
"""

from __future__ import annotations

import argparse
import logging
import sys

from tqdm import tqdm

from megatron_glm.monitor.run import RunStore
from megatron_glm.runtime.logs import HelpFormatter, add_verbose_option

log = logging.getLogger("glm-monitor")


class NoMetrics(Exception):
    """A RUN in which nothing was recognised as metrics (exit 2): a wrong path must not pass for a
    quiet run, or a cron alert aimed at it would stay silent forever."""


def _load(paths: list[str], background: bool, started_is_enough: bool = False) -> list[RunStore]:
    """Load every run; NoMetrics for one without a metric row. ``started_is_enough``: a run
    directory whose trainer has started (a start event) but not logged a step yet is accepted."""
    stores = [RunStore(p) for p in paths]  # raises FileNotFoundError naming the path before any work
    for store in tqdm(stores, desc="loading runs", unit="run", disable=None, leave=False):
        store.load(background=background)
        log.info("%s: %d rows in %.2f s (%d bad lines)", store.path, store.n, store.load_seconds, store.bad_lines)
        reason = store.missing_metrics()
        if reason and not (started_is_enough and store.has_started()):
            raise NoMetrics(reason)
        if reason:
            print(f"glm-monitor: note: {store.path}: no metrics yet, but its trainer has started (a start event): "
                  "they appear as they are logged", file=sys.stderr)
    return stores


def cmd_serve(args) -> int:
    from megatron_glm.monitor.server import LOOPBACK_NAMES, DashboardServer

    stores = _load(args.runs, background=True, started_is_enough=True)
    if args.host not in LOOPBACK_NAMES:
        print(f"glm-monitor: warning: listening on {args.host}: anyone who can reach this host can read "
              "these runs' metrics (use --host 127.0.0.1 and an SSH tunnel instead)", file=sys.stderr)
    try:
        server = DashboardServer((args.host, args.port), stores)
    except OSError as e:
        print(f"glm-monitor: error: cannot listen on {args.host}:{args.port}: {e.strerror}; "
              "choose another --port (0 picks a free one)", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"glm-monitor: serving {len(stores)} run(s) at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def cmd_spikes(args) -> int:
    store = _load([args.run], background=False)[0]
    spikes = store.spike_list()
    if args.json:
        from megatron_glm.monitor.server import to_json
        print(to_json({"run": store.path, "rule": store.rule.__dict__, "steps": store.n,
                       "bad_lines": store.bad_lines, "spikes": spikes}).decode())
    else:
        cols = ("step", "reason", "loss", "baseline_loss", "ratio", "grad_norm", "baseline_grad_norm",
                "grad_ratio", "action")
        rows = [[_fmt(s.get(c)) for c in cols] for s in spikes]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
        print(f"{len(spikes)} spike(s) in {store.n} logged steps of {store.path}"
              + (f"; {store.bad_lines} bad line(s) skipped" if store.bad_lines else ""))
    return 1 if spikes and args.fail_on_spike else 0


def cmd_report(args) -> int:
    from megatron_glm.monitor.report import write_report

    stores = _load(args.runs, background=False)
    try:
        size = write_report(stores, args.output)
    except OSError as e:
        print(f"glm-monitor: error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"glm-monitor: wrote {args.output} ({size / 1e6:.2f} MB, {len(stores)} run(s))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glm-monitor", description=__doc__, formatter_class=HelpFormatter)
    add_verbose_option(p, "log loading and every HTTP request")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="live dashboard (read-only, GET only)")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run directory or Megatron-LM text log")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, loopback: reachable from this machine only)")
    s.add_argument("--port", type=int, default=8750, help="port (0 = any free port)")
    s.set_defaults(func=cmd_serve)
    k = sub.add_parser("spikes", help="table of detected spikes")
    k.add_argument("run", metavar="RUN", help="run directory or Megatron-LM text log")
    k.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    k.add_argument("--fail-on-spike", action="store_true", help="exit 1 if any spike was found")
    k.set_defaults(func=cmd_spikes)
    r = sub.add_parser("report", help="self-contained HTML report")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run directory or Megatron-LM text log")
    r.add_argument("-o", "--output", required=True, help="HTML file to write")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from megatron_glm.cli.common import Failure, run_main

    return run_main("glm-monitor", args, args.func, lambda error: Failure(
        f"error: {error}") if isinstance(error, (FileNotFoundError, NoMetrics)) else None)


if __name__ == "__main__":
    sys.exit(main())
