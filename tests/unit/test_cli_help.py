"""`dbintel COMMAND --help` says what each command does and what every flag means, with its default."""

from __future__ import annotations

import argparse

import pytest

from dbintel.cli import build_parser


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_up_help_describes_the_throwaway_servers_and_every_flag_with_its_default(capsys):
    text = help_text(capsys, "up")
    assert "Without --config" in text and "throwaway PostgreSQL and Redis" in text
    assert "up-agent-N" in text and "first poll" in text
    for flag, default in (("--agents", "2"), ("--base-port", "50051"), ("--metrics-port", "8889")):
        assert flag in text and f"(default: {default})" in text, flag
    assert "(default: 13133)" in text


@pytest.mark.parametrize("name", ["validate", "coordinator", "agent", "status", "up"])
def test_every_subcommand_has_a_description_and_help_on_every_flag(name):
    parser = subcommands()[name]
    assert parser.description
    for action in parser._actions:
        assert action.help, (name, action.dest)
        if action.default not in (None, False, "", argparse.SUPPRESS):
            assert "%(default)s" in action.help or str(action.default) in action.help, (name, action.dest)


def test_listen_flags_show_the_built_in_defaults(capsys):
    text = help_text(capsys, "coordinator")
    assert "coordinator.grpc_listen in the config, else 0.0.0.0:50051" in text
    assert "agent.metrics_listen in the config, else 0.0.0.0:8889" in help_text(capsys, "agent")


def test_agents_must_be_a_positive_number(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--agents", "0"])
    assert "'0' is not a positive whole number" in capsys.readouterr().err
