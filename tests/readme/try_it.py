#!/usr/bin/env python3
"""Runs the README's "Try it" section as written and checks that each command prints what
the README says it prints, so that the door to the project cannot drift from the binary.

    python3 tests/readme/try_it.py target/debug/syncasync

Every ```sh block of the section runs, in order, in one bash process in a fresh directory
(so `./requests.db` is new), with `./target/release/syncasync` replaced by the binary given
and `cargo build --release` left out (CI builds once). The answers a block prints are read
as JSON values (curl adds no newline, so they may share a line) and compared with the
```text block that follows it, one template per line: `…` alone stands for any one answer,
`…` inside a string for any text; keys must be the same; numbers must be equal but for
timings (keys ending in `_ms`). Uses ports 8000, 8001, 8002 and 9999 on loopback, as the
README does.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARK = "@@try-it block {}@@"


def section(readme: str) -> str:
    start = readme.index("\n## Try it\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end >= 0 else len(readme)]


def blocks(text: str):
    """The fenced blocks of `text`, in order: (language, body)."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", text, re.S)]


def answers(output: str):
    """The JSON values printed, in order."""
    decoder = json.JSONDecoder()
    values, at = [], 0
    while True:
        while at < len(output) and output[at].isspace():
            at += 1
        if at == len(output):
            return values
        value, at = decoder.raw_decode(output, at)
        values.append(value)


def matches(template, value, key="") -> bool:
    if isinstance(template, str) and "…" in template:
        pattern = ".*".join(re.escape(part) for part in template.split("…"))
        return isinstance(value, str) and re.fullmatch(pattern, value, re.S) is not None
    if isinstance(template, dict):
        return (
            isinstance(value, dict)
            and template.keys() == value.keys()
            and all(matches(template[k], value[k], k) for k in template)
        )
    if isinstance(template, list):
        return (
            isinstance(value, list)
            and len(template) == len(value)
            and all(matches(t, v, key) for t, v in zip(template, value))
        )
    if isinstance(template, (int, float)) and not isinstance(template, bool):
        if key.endswith("_ms"):
            return isinstance(value, (int, float)) and not isinstance(value, bool)
    # Same type too: 1 is not true, and 1 is not 1.0.
    return type(template) is type(value) and template == value


def main() -> int:
    binary = os.path.abspath(sys.argv[1])
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        fenced = blocks(section(f.read()))
    # A command that fails stops the run: its block's mark never comes, and that is reported.
    script = ["set -euo pipefail"]
    expected = {}
    for n, (lang, body) in enumerate(fenced):
        if lang == "sh":
            body = body.replace("./target/release/syncasync", binary)
            body = "\n".join(l for l in body.splitlines() if l.strip() != "cargo build --release")
            script += [body, f"echo; echo '{MARK.format(n)}'"]
        elif lang == "text" and n > 0 and fenced[n - 1][0] == "sh":
            expected[n - 1] = [line for line in body.splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as workdir:
        run = subprocess.Popen(
            ["bash", "-c", "\n".join(script)],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = run.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            out, err = run.communicate()
            print("the section did not finish within 300 s")
        finally:
            # The section stops what it started; this is for a run that failed half-way.
            try:
                os.killpg(run.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    failures = []
    printed = {}
    rest = out
    for n, (lang, _) in enumerate(fenced):
        if lang != "sh":
            continue
        mark = MARK.format(n)
        if mark not in rest:
            failures.append(f"block {n} did not finish")
            break
        printed[n], rest = rest.split(mark, 1)
    for n, lines in expected.items():
        if n not in printed:
            continue
        try:
            got = answers(printed[n])
        except ValueError as e:
            failures.append(f"block {n} printed something that is not JSON ({e}): {printed[n]!r}")
            continue
        if len(got) != len(lines):
            failures.append(f"block {n}: {len(got)} answers, the README shows {len(lines)}:\n{printed[n]}")
            continue
        for line, value in zip(lines, got):
            template = None if line.strip() == "…" else json.loads(line)
            if template is not None and not matches(template, value):
                failures.append(f"block {n}: printed {json.dumps(value)}\n  README shows {line}")
    if failures:
        print("\n".join(failures))
        print("--- stderr ---\n" + err[-4000:])
        return 1
    print(f"README's Try it: {len(printed)} blocks ran, {len(expected)} outputs as shown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
