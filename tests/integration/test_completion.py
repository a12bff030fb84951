"""``watchdogd completion bash|zsh``: the scripts loaded in the real shells, Tab pressed.

bash: the completion function called as bash calls it (COMP_WORDS,
COMP_CWORD). zsh: an interactive zsh in a pseudo-terminal (zsh/zpty) with the
script on its fpath and compinit, a line typed, Tab, and the line read back.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def generate(shell: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "watchdogd", "completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def bash_complete(script: Path, words: list[str], cwd: Path) -> list[str]:
    array = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}\n"
        f"COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; COMP_LINE='{' '.join(words)}'\n"
        "COMP_POINT=${#COMP_LINE}; _shtab_watchdogd; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30, cwd=cwd, check=True
    )
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_subcommands_options_choices_and_files(tmp_path: Path) -> None:
    script = tmp_path / "watchdogd.bash"
    script.write_text(generate("bash"))
    (tmp_path / "watchdogd.yaml").write_text("services: {}\n")
    assert bash_complete(script, ["watchdogd", "ctl", "ve"], tmp_path) == ["veto"]
    assert set(bash_complete(script, ["watchdogd", ""], tmp_path)) >= {"check", "completion", "ctl", "run"}
    assert "--json" in bash_complete(script, ["watchdogd", "check", "--"], tmp_path)
    assert {"--junit", "-k"} <= set(bash_complete(script, ["watchdogd", "test-rules", "-"], tmp_path))
    assert bash_complete(script, ["watchdogd", "completion", ""], tmp_path) == ["bash", "zsh"]
    assert bash_complete(script, ["watchdogd", "check", "-c", "watchdogd.y"], tmp_path) == ["watchdogd.yaml"]


ZPTY = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z 'PROMPT="> "; fpath=({folder} $fpath); autoload -Uz compinit; compinit -u -d {folder}/.zcompdump'
zpty -w z 'unset zle_bracketed_paste; cd {folder}; print READY'
zpty -r z line '*READY*'
zpty -n -w z $'{typed}\t'
sleep 1
zpty -n -w z $'\x01print -r -- LINE: \n'
sleep 1
out=""
while zpty -r -t z chunk; do out+=$chunk; done
print -r -- "$out"
zpty -d z
"""


def zsh_complete(folder: Path, typed: str) -> str:
    driver = folder / "driver.zsh"
    driver.write_text(ZPTY.replace("{folder}", str(folder)).replace("{typed}", typed))
    done = subprocess.run(["zsh", "-f", str(driver)], capture_output=True, text=True, timeout=30, check=True)
    lines = [line for line in done.stdout.replace("\r", "\n").splitlines() if line.startswith("LINE: ")]
    assert lines, done.stdout[-2000:]
    return lines[-1].removeprefix("LINE: ").strip()


def test_zsh_completes_from_its_fpath(tmp_path: Path) -> None:
    (tmp_path / "_watchdogd").write_text(generate("zsh"))
    (tmp_path / "watchdogd.yaml").write_text("services: {}\n")
    assert zsh_complete(tmp_path, "watchdogd ctl ve") == "watchdogd ctl veto"
    assert zsh_complete(tmp_path, "watchdogd compl") == "watchdogd completion"
    assert zsh_complete(tmp_path, "watchdogd check --js") == "watchdogd check --json"
    assert zsh_complete(tmp_path, "watchdogd test-rules --jun") == "watchdogd test-rules --junit"
    assert zsh_complete(tmp_path, "watchdogd run -c watchdogd.y") == "watchdogd run -c watchdogd.yaml"


def test_an_unknown_shell_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "watchdogd", "completion", "fish"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "invalid choice: 'fish'" in done.stderr
