"""README's commands work as written.

Every command in a ```bash block of README.md is classified here, and a new one fails the test until
it is: commands that need nothing but this checkout run as written (in-process, in a scratch
directory where README's `run.yaml` is written, with `/lustre/` mapped into the scratch directory
and the data files it names present as placeholders: submit checks they exist, not what they hold;
`sbatch` and `squeue` are shims); commands that need the user's corpora, checkpoints or a
cluster are parsed by their tool's real argument parser (a renamed or removed option fails); the
rest are named with the test or CI step that runs them.
"""

import argparse
import contextlib
import io
import os
import re
import shlex
import stat
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

RUN = "run as written"
PARSE = "parsed: needs the user's corpora, checkpoints or a live run"
COVERED = {
    "make demo": "minutes of training, run by hand before a release; its parts are tested: tests/conftest.py "
                 "builds the demo datasets with the Makefile's glm-prep commands, tests/test_launch_run.py "
                 "stops and resumes glm-launch run",
    "make test": ".ci/run runs it on a clean clone",
    "pip install": ".ci/run installs from scratch; the container path is documentation",
    "glm-launch run tiny-cpu": "make demo (above) and tests/test_launch_run.py",
    "glm-monitor serve": "a server: tests/test_monitor_server.py and tests/browser/",
    "python -m megatron_glm.integrations.lm_eval": "the harness's parser in tests/test_lm_eval_adapter.py",
}
RUNS_AS_WRITTEN = ("glm-train describe", "glm-launch plan", "glm-launch submit", "glm-launch status", "touch ")


def readme_commands():
    """Commands of README's bash blocks: continuation lines joined, comments dropped."""
    commands, block = [], None
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            block = [] if line.strip() == "```bash" and block is None else None
            continue
        if block == [] and line.startswith("#!"):  # a script listing (submit's output), not commands
            block = None
        if block is not None:
            if block and block[-1].endswith("\\"):
                block[-1] = block[-1][:-1] + " " + line.strip()
            else:
                block.append(line.strip())
            if not block[-1].endswith("\\"):
                text = " ".join(shlex.split(block[-1], comments=True))
                if text:
                    commands.append(block[-1])
    return commands


def how(command: str) -> str:
    for prefix, covered_by in COVERED.items():
        if command.startswith(prefix):
            return f"covered: {covered_by}"
    if command.startswith(RUNS_AS_WRITTEN):
        return RUN
    if command.startswith(("glm-", "torchrun ")):
        return PARSE
    return "unclassified"


def test_every_readme_command_is_classified():
    commands = readme_commands()
    assert len(commands) > 20
    unclassified = [c for c in commands if how(c) == "unclassified"]
    assert not unclassified, f"classify these README commands in {__file__}: {unclassified}"


def _parser(tool: str) -> argparse.ArgumentParser:
    if tool == "glm-train":
        from megatron_glm.cli.train import build_parser
    elif tool == "glm-prep":
        from data_prep.cli import build_parser
    elif tool == "glm-launch":
        from launch.cli import build_parser
    elif tool == "glm-ckpt":
        from checkpoints.cli import _parser as build_parser
    elif tool == "glm-monitor":
        from megatron_glm.monitor.cli import build_parser
    elif tool == "glm-eval":
        from megatron_glm.cli.evaluate import _parser as build_parser
    elif tool == "glm-generate":
        from megatron_glm.cli.generate import _parser as build_parser
    else:
        raise AssertionError(f"no parser known for {tool}")
    return build_parser()


def _argv(command: str):
    words = shlex.split(command, comments=True)
    if words[0] == "torchrun":  # torchrun ... -m megatron_glm.cli.TOOL ARGS
        module = words[words.index("-m") + 1]
        return {"megatron_glm.cli.train": "glm-train", "megatron_glm.cli.evaluate": "glm-eval",
                "megatron_glm.cli.generate": "glm-generate"}[module], words[words.index("-m") + 2:]
    return words[0], words[1:]


@pytest.mark.parametrize("command", [c for c in readme_commands() if how(c) == PARSE])
def test_commands_that_need_user_data_parse(command):
    tool, argv = _argv(command)
    if tool == "glm-launch" and "--" in argv:  # what follows -- goes to glm-prep tokenize
        argv, passthrough = argv[:argv.index("--")], argv[argv.index("--") + 1:]
        _parse(_parser("glm-prep"), ["tokenize", "--input", "x", "--output-prefix", "y",
                                     "--tokenizer-model", "z", *passthrough], command)
    _parse(_parser(tool), argv, command)


def _parse(parser, argv, command):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            _, extra = parser.parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"README command does not parse: {command}\n{stderr.getvalue()}")
    stray = [item for item in extra if item.startswith("-") or "=" not in item]
    assert not stray, f"README command has options its tool does not know: {stray} in {command}"


def _readme_run_yaml() -> str:
    text = README.read_text()
    match = re.search(r"```yaml\n(# run\.yaml:.*?)```", text, re.S)
    assert match, "README has no run.yaml example"
    return match.group(1)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A directory holding README's run.yaml, /lustre mapped into it, and sbatch/squeue shims."""
    lustre = tmp_path / "lustre"
    (tmp_path / "run.yaml").write_text(_readme_run_yaml().replace("/lustre/", f"{lustre}/"))
    for prefix in ("pile", "wudao", "mip"):
        for ext in (".bin", ".idx"):
            (lustre / "data").mkdir(parents=True, exist_ok=True)
            (lustre / "data" / f"{prefix}{ext}").write_bytes(b"placeholder")
    (lustre / "data" / "glm130b.model").write_bytes(b"placeholder")
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, body in (("sbatch", "echo 4242"), ("squeue", "exit 0"), ("scontrol", "exit 1"), ("sacct", "exit 1")):
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _main(tool: str):
    if tool == "glm-train":
        from megatron_glm.cli.train import main
    elif tool == "glm-launch":
        from launch.cli import main
    else:
        raise AssertionError(tool)
    return main


def test_commands_that_need_nothing_but_the_checkout_run_as_written(scratch, capsys):
    """In README order, so status sees the run that submit made."""
    outputs = {}
    for command in (c for c in readme_commands() if how(c) == RUN):
        argv = shlex.split(command.replace("/lustre/", f"{scratch}/lustre/"), comments=True)
        if argv[0] == "touch":
            Path(argv[1]).touch()
            continue
        tool, argv = argv[0], argv[1:]
        code = _main(tool)(argv)
        out, err = capsys.readouterr()
        expected_code = 1 if "# does not fit" in command else 0  # as README's comment says
        assert code == expected_code, f"{command}\nexit {code}\n{err}"
        outputs[command] = out
        expected = re.search(r"#\s*params: (\d+)", command)
        if expected:  # the comment states the output
            assert f'"params": {expected.group(1)}' in out.replace("\n", "")
    submitted = [c for c in outputs if c.startswith("glm-launch submit") and "--dry-run" not in c]
    assert submitted and outputs[submitted[0]].strip() == "4242"
    assert (scratch / "lustre/glm130b/run/slurm/job.sbatch").is_file()


def test_the_plan_output_shown_in_readme_is_what_plan_prints(capsys):
    from launch.cli import main

    text = README.read_text()
    command = re.search(r"^(glm-launch plan --model glm-130b --cluster dgx-a100-96 --tp 4 --pp 8)", text, re.M).group(1)
    shown = re.search(r"```\n(glm-130b on dgx-a100-96.*?)```", text, re.S).group(1)
    assert main(shlex.split(command)[1:]) == 0
    printed = capsys.readouterr().out.splitlines()
    for line in shown.splitlines():
        if line.strip() and line.strip() != "...":
            assert line in printed, f"README shows a line plan does not print: {line!r}"


README_CHECKOUT = "/opt/megatron-glm"
"""Where README's rendered script pretends the checkout (and the submitting directory) is."""


def test_the_sbatch_script_shown_in_readme_is_what_submit_renders(scratch, capsys):
    from launch.cli import main

    text = README.read_text()
    sentence = re.search(r"`(glm-launch submit run\.yaml --cluster dgx-a100-96 --run-dir /lustre/glm130b/run\s+"
                         r"[^`]*--dry-run)`", text).group(1)
    shown = re.search(r"```bash\n(#!/bin/bash\n.*?)```", text, re.S).group(1)
    argv = shlex.split(sentence.replace("/lustre/", f"{scratch}/lustre/"))[1:]
    assert main(argv) == 0
    rendered = capsys.readouterr().out
    repo = str(Path(__file__).resolve().parents[1])
    for real, shown_as in ((sys.executable, f"{README_CHECKOUT}/.venv/bin/python"), (f"{scratch}/lustre/", "/lustre/"),
                           (repo, README_CHECKOUT), (str(scratch), README_CHECKOUT)):
        rendered = rendered.replace(real, shown_as)
    assert shown == rendered, "README's sbatch script differs from what submit renders: refresh it"
