"""`kvrouter` command line: serve, demo, sim-worker, check-config, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from router.errors import ConfigError
from router.logs import TEXT_FORMAT


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _cmd_serve(ns: argparse.Namespace) -> int:
    from router.config import load_settings
    from router.logs import configure_logging
    from router.processes.role import ProcessRole
    from router.processes.supervisor import check_processes, run_processes
    from router.server import run

    settings = load_settings(ns.config)
    configure_logging(settings.logging, ns.log_level)
    host, port = ns.listen if ns.listen else (settings.host, settings.port)
    if ns.child is not None:
        run(settings, host, port, ns.config, ProcessRole.parse(ns.child))
        return 0
    check_processes(settings, ns.processes, port)
    if ns.processes > 1:
        return run_processes(settings, ns.config, host, port, ns.processes)
    run(settings, host, port, ns.config)
    return 0


def _cmd_check_config(ns: argparse.Namespace) -> int:
    from router.config import dump_settings, load_settings

    settings = load_settings(ns.file)
    if ns.against:
        from router.reload import changes

        found = changes(load_settings(ns.against), settings)
        print(f"# {ns.file}: valid. {len(found)} keys differ from {ns.against}:")
        for change in found:
            print(change.describe())
        return 0
    print(f"# {ns.file}: valid. Effective configuration:")
    print(dump_settings(settings), end="")
    return 0


def _cmd_sim_worker(ns: argparse.Namespace) -> int:
    from router.sim.cli import run_sim_worker, sim_options_from_args

    try:
        options = sim_options_from_args(ns)
    except ValueError as err:
        print(f"kvrouter sim-worker: {err}", file=sys.stderr)
        return 2
    run_sim_worker(options, ns.host, ns.port)
    return 0


def _cmd_demo(ns: argparse.Namespace) -> int:
    from router.tooling.demo import run_demo

    return run_demo(ns)


def _cmd_bench(ns: argparse.Namespace) -> int:
    from router.tooling.bench.runner import run_bench

    return run_bench(ns)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvrouter", description="Session-affinity router and load balancer for LLM inference."
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the router")
    serve.add_argument("--config", default="router.yaml", help="path to router.yaml")
    serve.add_argument("--listen", type=_listen, help="HOST:PORT, overrides `listen` in the file")
    serve.add_argument(
        "--processes", type=int, default=1, metavar="N",
        help="N router processes accepting on one port (needs store.url unless pins and "
        "history are off)",
    )  # fmt: skip
    serve.add_argument("--child", help=argparse.SUPPRESS)  # set by the supervisor only
    serve.set_defaults(func=_cmd_serve)

    check = commands.add_parser(
        "check-config",
        help="validate a config and print it in full, or (--against) what differs from another "
        "and whether a reload (SIGHUP) applies each change live or it needs a restart",
    )
    check.add_argument("file", nargs="?", default="router.yaml")
    check.add_argument("--against", metavar="OLD", help="the running configuration's file")
    check.set_defaults(func=_cmd_check_config)

    sim = commands.add_parser("sim-worker", help="run a simulated OpenAI-compatible worker")
    from router.sim.cli import add_sim_arguments

    add_sim_arguments(sim)
    sim.set_defaults(func=_cmd_sim_worker)

    demo = commands.add_parser("demo", help="4 simulated workers and the router on loopback")
    from router.tooling.demo import add_demo_arguments

    add_demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)

    bench = commands.add_parser("bench", help="proxy overhead benchmark; prints a table")
    from router.tooling.bench.runner import add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), format=TEXT_FORMAT)
    try:
        return ns.func(ns)
    except ConfigError as err:
        print(f"kvrouter: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
