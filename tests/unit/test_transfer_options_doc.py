"""docs/interfaces.md's "Transfer options" table is the truth: every default, flag,
variable and extra-config key it lists is the one the code uses at each entry point."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from initcontainer.config import InitConfig
from sidecar.config import DaemonConfig, add_serve_arguments
from streamer.cli import download as download_cli
from streamer.settings import TransferOptions, resolve_transfer
from streamer.sizes import parse_size
from streamer.tensors import TensorStreamOptions
from streamer.vllm_plugin.settings import LoaderSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "interfaces.md"


def _rows() -> list[dict[str, str]]:
    text = DOC.read_text()
    section = text.split("## Transfer options", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows.append(dict(zip(head, cells, strict=True)))
    return rows


ROWS = _rows()


def _code(cell: str) -> str | None:
    """The first `...` in a cell, or None for an em dash."""
    m = re.search(r"`([^`]+)`", cell)
    return m.group(1) if m else None


def _value(option: str, options: TransferOptions) -> float:
    obj: object = options
    for part in option.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


def _parse(option: str, text: str) -> float:
    return parse_size(text) if option in ("chunk_size", "max_memory") else float(text)


def test_the_table_lists_every_transfer_option():
    assert {r["option"].strip("`") for r in ROWS} == {
        "concurrency", "chunk_size", "max_memory", "retry.max_attempts", "retry.base_delay",
        "retry.max_delay"}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["option"].strip("`"))
def test_documented_defaults_are_the_code_defaults(row):
    option = row["option"].strip("`")
    default = _parse(option, _code(row["default"]))
    tensor_default = _parse(option, _code(row["tensor stream default"]))
    # Each entry point, resolved from an empty environment and no flags.
    init = InitConfig.from_args(["s3://models/m", "/tmp/m"], {})
    daemon = DaemonConfig.from_sources({}, {})
    for options in (TransferOptions(), resolve_transfer({}), init, daemon):
        assert _value(option, options) == default, (option, type(options).__name__)
    for options in (TensorStreamOptions(), LoaderSettings.from_extra_config({}).options):
        assert _value(option, options) == tensor_default, option


@pytest.mark.parametrize("row", [r for r in ROWS if _code(r["environment"])],
                         ids=lambda r: r["option"].strip("`"))
def test_documented_variables_and_flags_win_in_that_order(row):
    option = row["option"].strip("`")
    name = option.split(".")[-1]
    var = _code(row["environment"])
    env_value, flag_value = ("2Mi", "3Mi") if name in ("chunk_size", "max_memory") else ("7", "9")
    from_env = resolve_transfer({var: env_value})
    assert _value(option, from_env) == _parse(option, env_value)
    both = resolve_transfer({var: env_value}, {name: flag_value})
    assert _value(option, both) == _parse(option, flag_value)
    init = InitConfig.from_args(["s3://models/m", "/tmp/m"], {var: env_value})
    assert _value(option, init) == _parse(option, env_value)
    daemon = DaemonConfig.from_sources({}, {var: env_value})
    assert _value(option, daemon) == _parse(option, env_value)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["option"].strip("`"))
def test_documented_flags_and_extra_config_keys_exist(row):
    flag = _code(row["flag (`download`, `cache serve`)"].replace("`download`", "")
                 .replace("`cache serve`", ""))
    commands = argparse.ArgumentParser().add_subparsers()
    download_cli.register(commands, {})
    download = commands.choices["download"]
    serve = argparse.ArgumentParser()
    add_serve_arguments(serve)
    if flag is not None:
        assert flag in download._option_string_actions, flag
        if "download` only" not in row["flag (`download`, `cache serve`)"]:
            assert flag in serve._option_string_actions, flag
    key = _code(row["vLLM extra-config key"])
    assert key is not None
    option = row["option"].strip("`")
    value = "4Mi" if option in ("chunk_size", "max_memory") else 3
    got = LoaderSettings.from_extra_config({key: value}).options
    assert _value(option, got) == _parse(option, str(value))
