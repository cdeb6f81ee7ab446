"""The conventions the five console scripts share: exit codes (0 ok, 2 bad input or usage, the
others each tool documents in --help), --verbose before or after the subcommand with one effect,
and --help that gives every option a help text and shows its default."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import checkpoints.cli
import data_prep.cli
import launch.cli
import megatron_glm.cli.evaluate
import megatron_glm.cli.generate
import megatron_glm.cli.train
import megatron_glm.monitor.cli
from megatron_glm.runtime.logs import HelpFormatter

BIN = Path(sys.executable).parent  # the environment's console scripts, activated or not

PARSERS = {
    "glm-train": [megatron_glm.cli.train.build_parser, megatron_glm.cli.train.build_train_parser],
    "glm-prep": [data_prep.cli.build_parser],
    "glm-launch": [launch.cli.build_parser],
    "glm-ckpt": [checkpoints.cli._parser],
    "glm-monitor": [megatron_glm.monitor.cli.build_parser],
    "glm-eval": [megatron_glm.cli.evaluate._parser],
    "glm-generate": [megatron_glm.cli.generate._parser],
}



def _run(tool, *args, timeout=120):
    return subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _parsers(parser, name):
    """(name, parser) of a parser and, recursively, of its subcommands."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def _meaningful_default(action) -> bool:
    default = action.default
    return not (default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                or default in ([], "") or action.nargs == 0)


def _problems(parser, name):
    """What --help of one parser fails to say: arguments without help text, defaults not shown (a
    value argparse shows with "(default: ...)", or an optional option left at None whose help does
    not say what happens without it)."""
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        label = f"{name} {'/'.join(action.option_strings) or action.dest}"
        if not action.help:
            yield f"{label}: no help"
            continue
        shown = parser._get_formatter()._get_help_string(action)
        unstated_none = (action.default is None and action.option_strings and not action.required
                         and action.nargs != 0)
        if (_meaningful_default(action) or unstated_none) and "default" not in shown:
            yield f"{label}: default not stated"


def test_every_argument_has_help_and_every_default_is_shown():
    problems, formatters = set(), []
    for tool, builders in PARSERS.items():
        for build in builders:
            for name, parser in _parsers(build(), tool):
                if not issubclass(parser.formatter_class, HelpFormatter):
                    formatters.append(name)
                problems.update(_problems(parser, name))
    assert formatters == [], "parsers without the shared HelpFormatter (defaults in --help)"
    assert sorted(problems) == []


def test_help_shows_the_module_docstring_defaults_and_formatting():
    help_text = data_prep.cli.build_parser().format_help()
    assert "    glm-prep tokenize --input FILES..." in help_text  # the docstring's layout is kept
    tokenize = [a for a in data_prep.cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    text = tokenize[0].choices["tokenize"].format_help()
    assert "(default: 0.05)" in text and "(default: text)" in text
    inspect = tokenize[0].choices["inspect"].format_help()
    for default in ("(default: mask)", "(default: 1)", "(default: 2048)"):
        assert default in " ".join(inspect.split()), default
    train = tokenize[0].choices["train-tokenizer"].format_help()
    assert "(default: 32000)" in train


EXIT_CODES = {  # what each tool's --help must say about its exit codes beyond 0 and 2
    "glm-train": ["75 stopped by a signal", "77 the pre-flight check", "2 bad"],
    "glm-prep": ["Exit codes: 0 done; 2 bad usage or input", "3 a failed job"],
    "glm-launch": ["Exit 0 fits, 1 does not fit, 2 bad input", "2 bad configuration"],
    "glm-ckpt": ["Exit codes: 0 ok; 2 bad input or usage", "1 a check that failed"],
    "glm-monitor": ["Exit codes: 0 fine; 1 spikes found with --fail-on-spike; 2 bad input or"],
    "glm-eval": ["Exit codes: 0 done; 2 bad input or usage"],
    "glm-generate": ["Exit codes: 0 done, 2 bad input"],
}


@pytest.mark.parametrize("tool", sorted(PARSERS))
def test_help_documents_the_exit_codes_and_bad_usage_exits_2(tool):
    shown = _run(tool, "--help")
    assert shown.returncode == 0 and shown.stderr == ""
    flat = " ".join(shown.stdout.split())
    for text in EXIT_CODES[tool]:
        assert text in flat, (tool, text)
    assert "--verbose" in flat
    bad = _run(tool, "--no-such-option")
    assert bad.returncode == 2 and bad.stdout == ""
    assert "usage:" in bad.stderr and f"{tool}: error:" in bad.stderr


# --- --verbose before or after the subcommand ------------------------------------------------------


@pytest.mark.parametrize("tool, argv", [
    ("glm-train", ["describe", "glm-tiny"]),
    ("glm-prep", ["merge", "--input", "a", "--output-prefix", "b"]),
    ("glm-launch", ["status", "run"]),
    ("glm-ckpt", ["inspect", "ckpt"]),
    ("glm-monitor", ["spikes", "run"]),
])
def test_verbose_is_parsed_the_same_before_and_after_the_subcommand(tool, argv):
    def parse(args):
        if tool == "glm-train":  # main() routes the subcommands to build_parser
            return megatron_glm.cli.train.build_parser().parse_args(args)
        return PARSERS[tool][0]().parse_known_args(args)[0]

    before, after, without = parse(["--verbose", *argv]), parse([*argv, "--verbose"]), parse(argv)
    assert before.verbose is True and after.verbose is True and without.verbose is False
    assert vars(before) == vars(after)


def test_verbose_before_and_after_the_subcommand_on_the_command_line(tmp_path, monkeypatch, capsys):
    """The real scripts accept both places and do the same (glm-monitor logs its loading with it).
    glm-train routes `--verbose describe` to the subcommand, not to the training form (which needs
    --config); glm-launch accepts it before every subcommand (it took it only after `run`). The
    glm-ckpt case: tests/checkpoints/test_ckpt_errors.py."""
    from megatron_glm.monitor.synthetic_runs import Curve, write_run

    write_run(tmp_path / "run", Curve(40, seed=1))
    for flags in (["--verbose", "spikes", tmp_path / "run"], ["spikes", tmp_path / "run", "--verbose"]):
        r = _run("glm-monitor", *flags)
        assert r.returncode == 0 and f"glm-monitor: {tmp_path / 'run'}: 40 rows in" in r.stderr, r.stderr
    assert "rows in" not in _run("glm-monitor", "spikes", tmp_path / "run").stderr

    for flags in (["--verbose", "--quiet", "merge"], ["merge", "--quiet", "--verbose"]):
        r = _run("glm-prep", *flags, "--input", tmp_path / "none", "--output-prefix", tmp_path / "out")
        assert r.returncode == 2 and f"glm-prep: {tmp_path / 'none'}: no complete .bin/.idx pair" in r.stderr
    assert not list(tmp_path.glob("out*"))

    r = _run("glm-train", "--verbose", "describe", "glm-tiny", "model.num_heads=3")
    assert r.returncode == 2 and "unknown field 'model.num_heads'" in r.stderr, r.stderr
    # After the subcommand, and before an override (argparse alone would refuse the override there):
    # in-process, without the verbose logging set-up that would outlive the call.
    monkeypatch.setattr(megatron_glm.cli.train, "configure_logging", lambda *args, **kwargs: None)
    assert megatron_glm.cli.train.main(["describe", "glm-tiny", "--verbose", "model.num_heads=3"]) == 2
    assert "unknown field 'model.num_heads'" in capsys.readouterr().err

    r = _run("glm-launch", "--verbose", "status", tmp_path)
    assert r.returncode == 2 and "not a run directory" in r.stderr, r.stderr


def test_the_documented_failed_check_codes_through_the_real_scripts(tmp_path):
    """Beyond 0 and 2, the codes each --help documents, through the real scripts (glm-prep's 3 runs
    in test_prep.py, glm-monitor's 1 in test_monitor_cli.py): glm-ckpt verify 1 for damage,
    glm-launch plan 1 for a layout that does not fit; both write nothing."""
    from megatron_glm.training.manifest import checksum_files, list_files, write_manifest

    checkpoint = tmp_path / "iter_0000001"
    checkpoint.mkdir()
    (checkpoint / "a.bin").write_bytes(b"hello")
    write_manifest(checkpoint, checksum_files(checkpoint, list_files(checkpoint)), step=1)
    r = _run("glm-ckpt", "verify", checkpoint)
    assert r.returncode == 0 and f"ok      {checkpoint}" in r.stdout
    (checkpoint / "a.bin").write_bytes(b"hellO")
    r = _run("glm-ckpt", "verify", checkpoint)
    assert r.returncode == 1 and f"CORRUPT {checkpoint}" in r.stdout and "a.bin has CRC-32" in r.stdout
    r = _run("glm-launch", "plan", "--model", "glm-130b", "--cluster", "dgx-a100-96", "--tp", "8", "--pp", "1",
             "--dp", "96")
    assert r.returncode == 1 and "does NOT fit: peak" in r.stdout, r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "iter_0000001", "manifest.json"]
