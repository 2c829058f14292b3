"""The `dbintel` command: coordinator, agent, up, status, validate."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys

from dbintel import __version__
from dbintel.common.config import CONFIG_ENV_VAR, ROLES, Config, ConfigError, TLSSettings, load_config
from dbintel.common.durations import format_duration


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("asyncio", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
    print(f"{path}: valid — mode {scaling.mode}, {len(config.databases)} database(s), heartbeat "
          f"{format_duration(scaling.coordinator.heartbeat_interval)}, node_timeout "
          f"{format_duration(scaling.coordinator.node_timeout)}")
    return 0


def _metric_switch_problems(config: Config) -> list[str]:
    """Per-database `metrics:` switches must name metrics the collector declares."""
    from dbintel.agent.collectors import CollectorUnavailable, table_for
    problems = []
    for index, db in enumerate(config.databases):
        if not db.metrics:
            continue
        try:
            known = table_for(db.type).by_name
        except CollectorUnavailable as exc:
            problems.append(f"databases[{index}].metrics: {exc}")
            continue
        problems += [f"databases[{index}].metrics.{name}: not a {db.type} metric" for name in db.metrics
                     if name not in known]
    return problems


def cmd_coordinator(args) -> int:
    from dbintel.coordinator.server import Coordinator
    config = _load(args, "coordinator")
    coordinator = Coordinator(config, config_path=args.config or os.environ.get(CONFIG_ENV_VAR),
                              grpc_listen=args.grpc_listen, metrics_listen=args.metrics_listen,
                              health_listen=args.health_listen)
    asyncio.run(_until_signal(coordinator.start, coordinator.shutdown))
    return 0


def agent_id_from_env() -> str:
    return os.environ.get("NODE_ID") or socket.gethostname()


def cmd_agent(args) -> int:
    from dbintel.agent.runtime import Agent
    config = _load(args, "agent")
    agent = Agent(config, agent_id=args.agent_id or agent_id_from_env(), coordinator=args.coordinator,
                  metrics_listen=args.metrics_listen, health_listen=args.health_listen,
                  config_path=args.config or os.environ.get(CONFIG_ENV_VAR))
    asyncio.run(agent.run_until_signal())
    return 0


OPERATOR_TOKEN_ENV_VAR = "DBINTEL_OPERATOR_TOKEN"


def _status_security(args) -> tuple[TLSSettings | None, object]:
    """TLS settings and operator token from the flags (the token from --token-file, else the environment)."""
    from pydantic import ValidationError

    from dbintel.common.secrets import resolve_secret
    tls = None
    if args.tls or args.ca_file or args.cert_file:
        try:
            tls = TLSSettings(enabled=True, ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                              server_name=args.server_name)
        except ValidationError:
            raise ValueError("--cert-file and --key-file go together") from None
    reference = f"${{file:{os.path.abspath(args.token_file)}}}" if args.token_file else (
        f"${{env:{OPERATOR_TOKEN_ENV_VAR}}}" if os.environ.get(OPERATOR_TOKEN_ENV_VAR) else None)
    return tls, resolve_secret(reference)


def cmd_status(args) -> int:
    from dbintel.common.grpc_security import TLSFileError
    from dbintel.common.secrets import SecretResolutionError
    from dbintel.common.status import fetch_status, render_status
    try:
        tls, token = _status_security(args)
        status = asyncio.run(fetch_status(args.coordinator, agent_filter=args.agent, timeout=args.timeout,
                                          tls=tls, token=token))
    except (ConnectionError, ValueError, TLSFileError, SecretResolutionError) as exc:
        print(f"dbintel status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render_status(status))
    return 0


def cmd_up(args) -> int:
    from dbintel.up import run_up
    return run_up(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbintel", description="Horizontally scalable database monitoring.")
    parser.add_argument("--version", action="version", version=f"dbintel {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("DBINTEL_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--config", help=f"YAML config file (default: ${CONFIG_ENV_VAR})")
        return p

    p = with_config(sub.add_parser("validate", help="check a config file; report every problem at once"))
    p.add_argument("file", nargs="?")
    p.add_argument("--check-files", choices=(*ROLES, "all"),
                   help="also check that this role's TLS certificate/key files are readable here (as that role "
                        "does at start); off by default, since the files usually exist only in the pods")
    p.set_defaults(func=cmd_validate)

    p = with_config(sub.add_parser("coordinator", help="run a coordinator replica"))
    p.add_argument("--grpc-listen")
    p.add_argument("--metrics-listen")
    p.add_argument("--health-listen")
    p.set_defaults(func=cmd_coordinator)

    p = with_config(sub.add_parser("agent", help="run an agent"))
    p.add_argument("--coordinator", help="coordinator host:port (default: agent.coordinator)")
    p.add_argument("--agent-id", help="default: $NODE_ID, else the host name")
    p.add_argument("--metrics-listen")
    p.add_argument("--health-listen")
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("status", help="cluster, agents and assignments as a table")
    p.add_argument("--coordinator", default="localhost:50051")
    p.add_argument("--agent", default="", help="only this agent's assignments")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--tls", action="store_true", help="TLS with the system's trusted CAs (implied by --ca-file)")
    p.add_argument("--ca-file", help="CA that signed the coordinator's certificate")
    p.add_argument("--cert-file", help="client certificate, for mutual TLS")
    p.add_argument("--key-file", help="client key, for mutual TLS")
    p.add_argument("--server-name", help="name the coordinator's certificate must carry, if not the host dialed")
    p.add_argument("--token-file", help=f"operator bearer token file (default: ${OPERATOR_TOKEN_ENV_VAR})")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("up", help="a coordinator and two agents on this machine, for trying it out"))
    p.add_argument("--agents", type=int, default=2)
    p.add_argument("--base-port", type=int, default=50051, help="the coordinator's gRPC port")
    p.add_argument("--metrics-port", type=int, default=8889, help="the coordinator's; agents take the next ones")
    p.add_argument("--health-port", type=int, default=13133, help="the coordinator's; agents take the next ones")
    p.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
