"""The `dbintel` command: coordinator, agent, up, status, top, validate."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time

from pydantic import SecretStr

from dbintel import __version__
from dbintel.common.config import CONFIG_ENV_VAR, ROLES, Config, ConfigError, TLSSettings, load_config
from dbintel.common.durations import format_duration


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("asyncio", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # PyMongo's DEBUG log carries whole commands and replies: a currentOp or system.profile reply holds
    # other clients' filter values, which must never reach a log (design property 9), whatever --log-level.
    logging.getLogger("pymongo").setLevel(logging.WARNING)


def _load(args, role: str) -> Config:
    try:
        return load_config(args.config, check_files=(role,))
    except ConfigError as exc:
        print(f"dbintel: refusing to start, {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _until_signal(start, stop) -> None:
    from dbintel.common.grpc_security import TLSFileError
    from dbintel.common.secrets import SecretResolutionError

    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    try:
        await start()
    except (TLSFileError, SecretResolutionError) as exc:  # messages name the setting, never a secret value
        print(f"dbintel: refusing to start, {exc}", file=sys.stderr)
        await stop()
        raise SystemExit(2) from None
    try:
        await stop_event.wait()
    finally:
        await stop()


# -- subcommands ----------------------------------------------------------------------------------------
def cmd_validate(args) -> int:
    path = args.file or args.config or os.environ.get(CONFIG_ENV_VAR)
    if not path:
        print("dbintel validate: give a file (dbintel validate FILE) or --config", file=sys.stderr)
        return 2
    try:
        roles = ROLES if args.check_files == "all" else (args.check_files,) if args.check_files else ()
        config = load_config(path, check_files=roles)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    problems = _metric_switch_problems(config)
    if problems:
        print(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 1
    scaling = config.scaling
    print(
        f"{path}: valid — mode {scaling.mode}, {len(config.databases)} database(s), heartbeat "
        f"{format_duration(scaling.coordinator.heartbeat_interval)}, node_timeout "
        f"{format_duration(scaling.coordinator.node_timeout)}"
    )
    return 0


def _metric_switch_problems(config: Config) -> list[str]:
    """Per-database `metrics:` switches must name metrics the collector declares."""
    from dbintel.agent.collectors import CollectorUnavailable, table_for

    problems = []
    for index, db in enumerate(config.databases):
        if not db.metrics:
            continue
        entry = f"databases[{index}] ({db.name}).metrics"
        try:
            known = table_for(db.type).by_name
        except CollectorUnavailable as exc:
            problems.append(f"{entry}: {exc}")
            continue
        problems += [f"{entry}.{name}: not a {db.type} metric" for name in db.metrics if name not in known]
    return problems


def cmd_coordinator(args) -> int:
    from dbintel.coordinator.server import Coordinator

    config = _load(args, "coordinator")
    coordinator = Coordinator(
        config,
        config_path=args.config or os.environ.get(CONFIG_ENV_VAR),
        grpc_listen=args.grpc_listen,
        metrics_listen=args.metrics_listen,
        health_listen=args.health_listen,
    )
    asyncio.run(_until_signal(coordinator.start, coordinator.shutdown))
    return 0


def agent_id_from_env() -> str:
    return os.environ.get("NODE_ID") or socket.gethostname()


def cmd_agent(args) -> int:
    from dbintel.agent.runtime import Agent

    config = _load(args, "agent")
    agent = Agent(
        config,
        agent_id=args.agent_id or agent_id_from_env(),
        coordinator=args.coordinator,
        metrics_listen=args.metrics_listen,
        health_listen=args.health_listen,
        config_path=args.config or os.environ.get(CONFIG_ENV_VAR),
    )
    asyncio.run(agent.run_until_signal())
    return 0


OPERATOR_TOKEN_ENV_VAR = "DBINTEL_OPERATOR_TOKEN"


def _status_security(args) -> tuple[TLSSettings | None, SecretStr | None]:
    """TLS settings and operator token from the flags (the token from --token-file, else the environment)."""
    from pydantic import ValidationError

    from dbintel.common.secrets import resolve_secret

    tls = None
    if args.tls or args.ca_file or args.cert_file:
        try:
            tls = TLSSettings(
                enabled=True,
                ca_file=args.ca_file,
                cert_file=args.cert_file,
                key_file=args.key_file,
                server_name=args.server_name,
            )
        except ValidationError:
            raise ValueError("--cert-file and --key-file go together") from None
    reference = (
        f"${{file:{os.path.abspath(args.token_file)}}}"
        if args.token_file
        else (f"${{env:{OPERATOR_TOKEN_ENV_VAR}}}" if os.environ.get(OPERATOR_TOKEN_ENV_VAR) else None)
    )
    return tls, resolve_secret(reference)


def cmd_status(args) -> int:
    from dbintel.common.grpc_security import TLSFileError
    from dbintel.common.secrets import SecretResolutionError
    from dbintel.common.status import fetch_status, render_status

    try:
        tls, token = _status_security(args)
        status = asyncio.run(
            fetch_status(args.coordinator, agent_filter=args.agent, timeout=args.timeout, tls=tls, token=token)
        )
    except (ConnectionError, ValueError, TLSFileError, SecretResolutionError) as exc:
        print(f"dbintel status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render_status(status))
    return 0


def cmd_top(args) -> int:
    from dbintel.common.grpc_security import TLSFileError
    from dbintel.common.secrets import SecretResolutionError
    from dbintel.common.top import TopError, fetch_top, render_top

    try:
        tls, token = _status_security(args)
    except (ValueError, TLSFileError, SecretResolutionError) as exc:
        print(f"dbintel top: {exc}", file=sys.stderr)
        return 1
    interactive = not args.once and not args.json and sys.stdout.isatty()
    try:
        while True:
            try:
                document = asyncio.run(
                    fetch_top(args.coordinator, args.resource, timeout=args.timeout, tls=tls, token=token)
                )
            except (TopError, ConnectionError, ValueError, TLSFileError) as exc:
                if args.once:
                    print(f"dbintel top: {exc}", file=sys.stderr)
                    return 1
                document, error = None, f"dbintel top: {exc}"  # refreshing: show it and try again
            if document is not None:
                text = json.dumps(document, sort_keys=True) if args.json else render_top(document)
            else:
                text = error
            if interactive:
                sys.stdout.write("\x1b[H\x1b[2J")  # home and clear, like top
            print(text, flush=True)
            if args.once:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_up(args) -> int:
    from dbintel.up import run_up

    return run_up(args)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


UP_DESCRIPTION = """\
The whole stack on this machine, for trying it out: one coordinator (the config's scaling mode;
memory by default, no Redis needed) and --agents agents, in one process.

Without --config (or $DBINTEL_CONFIG), it starts throwaway PostgreSQL and Redis servers from the
system packages (loopback only, data in a temp dir, deleted on exit) and monitors those; with a
config, it monitors the config's databases. Once every database has had its first poll it prints
where to look: the metrics URLs, a `dbintel status` line and a grpcurl line. Ctrl-C stops everything.

Ports: the coordinator takes --base-port (gRPC), --metrics-port and --health-port; agent N
(up-agent-N) takes --metrics-port + N and --health-port + N."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbintel", description="Horizontally scalable database monitoring.")
    parser.add_argument("--version", action="version", version=f"dbintel {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("DBINTEL_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default: $DBINTEL_LOG_LEVEL, else info)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=description or summary[:1].upper() + summary[1:] + ".",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="PATH", help=f"YAML config file (default: ${CONFIG_ENV_VAR})")
        return p

    defaults = Config()

    def listen_flags(p: argparse.ArgumentParser, role: str, grpc: bool = False) -> None:
        flags = [("--grpc-listen", "grpc_listen")] if grpc else []
        for flag, key in [*flags, ("--metrics-listen", "metrics_listen"), ("--health-listen", "health_listen")]:
            default = getattr(getattr(defaults, role), key)
            p.add_argument(flag, metavar="HOST:PORT", help=f"default: {role}.{key} in the config, else {default}")

    p = with_config(command("validate", "check a config file; report every problem at once"))
    p.add_argument("file", nargs="?", help=f"the config file (default: --config, else ${CONFIG_ENV_VAR})")
    p.add_argument(
        "--check-files",
        choices=(*ROLES, "all"),
        help="also check that this role's TLS certificate/key files are readable here (as that role "
        "does at start); off by default, since the files usually exist only in the pods",
    )
    p.set_defaults(func=cmd_validate)

    p = with_config(command("coordinator", "run a coordinator replica"))
    listen_flags(p, "coordinator", grpc=True)
    p.set_defaults(func=cmd_coordinator)

    p = with_config(command("agent", "run an agent"))
    p.add_argument("--coordinator", metavar="HOST:PORT", help="default: agent.coordinator in the config")
    p.add_argument("--agent-id", help="default: $NODE_ID, else the host name")
    listen_flags(p, "agent")
    p.set_defaults(func=cmd_agent)

    def operator_flags(p: argparse.ArgumentParser) -> None:
        """How to reach the coordinator's OperatorService (status, top)."""
        p.add_argument("--coordinator", metavar="HOST:PORT", default="localhost:50051", help="default: %(default)s")
        p.add_argument(
            "--timeout", type=float, default=5.0, metavar="SECONDS", help="seconds per RPC (default: %(default)s)"
        )
        p.add_argument("--tls", action="store_true", help="TLS with the system's trusted CAs (implied by --ca-file)")
        p.add_argument("--ca-file", metavar="PATH", help="CA that signed the coordinator's certificate")
        p.add_argument("--cert-file", metavar="PATH", help="client certificate, for mutual TLS")
        p.add_argument("--key-file", metavar="PATH", help="client key, for mutual TLS")
        p.add_argument(
            "--server-name",
            metavar="NAME",
            help="name the coordinator's certificate must carry, if not the host dialed",
        )
        p.add_argument(
            "--token-file", metavar="PATH", help=f"operator bearer token file (default: ${OPERATOR_TOKEN_ENV_VAR})"
        )

    p = command("status", "cluster, agents and assignments as a table")
    operator_flags(p)
    p.add_argument("--agent", metavar="AGENT_ID", default="", help="only this agent's assignments")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_status)

    p = command(
        "top",
        "a database's top queries and live sessions, from the agent that owns it",
        description="A database's top queries of the last interval and what runs on it now (state, wait,\n"
        "duration, blocker), refreshed; the coordinator says which agent owns it, and that agent\n"
        "answers from its last reads (GET /queries on its metrics port). Query texts are obfuscated.",
    )
    p.add_argument("resource", metavar="RESOURCE", help="resource id, e.g. db:postgresql/orders (see dbintel status)")
    operator_flags(p)
    p.add_argument(
        "--interval", type=_seconds, default=2.0, metavar="SECONDS", help="refresh period (default: %(default)s)"
    )
    p.add_argument("--once", action="store_true", help="print once and exit (non-zero on an error)")
    p.add_argument("--json", action="store_true", help="print the agent's JSON (one line per refresh)")
    p.set_defaults(func=cmd_top)

    p = with_config(
        command("up", "a coordinator and agents on this machine, for trying it out", description=UP_DESCRIPTION)
    )
    p.add_argument(
        "--agents", type=_positive, default=2, metavar="N", help="how many agents to run (default: %(default)s)"
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=50051,
        metavar="PORT",
        help="the coordinator's gRPC port (default: %(default)s)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=8889,
        metavar="PORT",
        help="the coordinator's metrics port; agent N takes this + N (default: %(default)s)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=13133,
        metavar="PORT",
        help="the coordinator's health port; agent N takes this + N (default: %(default)s)",
    )
    p.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
