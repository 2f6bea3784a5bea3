"""The docs cannot drift from the code: every `dsnas` command shown in the README and docs/
parses with the CLI's parser, every `--set` key is a configuration key, every relative link
resolves, every public name has a docstring and a line in docs/api.md, the files a page shows are
the repository's, and BENCHMARKS.md opens with its summary and has no title twice. The
quickstart's commands run end to end in the slow tier."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BENCHMARKS = ROOT / "BENCHMARKS.md"
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
MARKDOWN = [*DOCS, BENCHMARKS, *RESULTS]
PAGES = ("quickstart", "searching", "data", "budgets", "spaces", "published", "clusters", "errors", "formats",
         "api")
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
OPERATORS = {"&&", "||", ";", "|", "&"}
PLACEHOLDER = re.compile(r"^(space\.)?[A-Z][A-Z_]*$")  # --set KEY=VALUE, --set space.KEY=VALUE in prose


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_blocks(path: Path) -> list[tuple[str, str, int]]:
    """Every fenced block of ``path``: (language, text, line of its opening fence)."""
    blocks, lines, fence, lang, start, body = [], path.read_text().splitlines(), None, "", 0, []
    for i, line in enumerate(lines, 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence, lang, start, body = m.group(1), m.group(2).lower(), i, []
        elif fence is not None and line.strip().startswith(fence) and not line.strip()[len(fence):].strip():
            blocks.append((lang, "\n".join(body) + "\n", start))
            fence = None
        elif fence is not None:
            body.append(line)
    assert fence is None, f"{rel(path)}: the block opened at line {start} is never closed"
    return blocks


def prose(path: Path) -> str:
    """``path`` without its fenced blocks."""
    out, inside = [], None
    for line in path.read_text().splitlines():
        m = FENCE.match(line)
        if inside is None and m:
            inside = m.group(1)
        elif inside is not None and line.strip().startswith(inside):
            inside = None
        elif inside is None:
            out.append(line)
    return "\n".join(out)


def dsnas_arguments(segment: list[str]) -> list[str] | None:
    """The arguments ``segment`` (one simple command) gives dsnas, or None if it runs something
    else: ``dsnas ...``, ``.venv/bin/dsnas ...``, ``python -m dsnas ...``, ``torchrun ... -m dsnas ...``."""
    while segment and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", segment[0]):  # VAR=value before a command
        segment = segment[1:]
    if not segment:
        return None
    if Path(segment[0]).name == "dsnas":
        return segment[1:]
    for i, token in enumerate(segment[:-1]):
        if token == "-m" and segment[i + 1] == "dsnas":
            return segment[i + 2:]
    return None


def shell_commands(path: Path) -> list[tuple[str, list[str]]]:
    """Every dsnas command in the shell blocks of ``path``: (where, its arguments)."""
    found = []
    for lang, text, start in code_blocks(path):
        if lang not in SHELL:
            continue
        logical, pending, first = [], "", 0
        for offset, line in enumerate(text.splitlines()):
            first = first if pending else start + 1 + offset
            if line.endswith("\\"):  # a trailing backslash continues the line
                pending += line[:-1] + " "
                continue
            logical.append((first, pending + line))
            pending = ""
        for number, line in logical:
            tokens = shlex.split(line, comments=True)
            segments, current = [], []
            for token in tokens:
                if token in OPERATORS:
                    segments.append(current)
                    current = []
                else:
                    current.append(token)
            segments.append(current)
            for segment in segments:
                args = dsnas_arguments([t for t in segment if t != "$@"])
                if args is not None:
                    found.append((f"{rel(path)}:{number}", args))
    return found


COMMANDS = [c for path in DOCS for c in shell_commands(path)]


def strict_parser() -> argparse.ArgumentParser:
    """The CLI's parser, with every subcommand refusing abbreviated options (so that a renamed
    flag is not taken for an abbreviation of its new name)."""
    from dsnas.cli import build_parser

    parser = build_parser()
    todo = [parser]
    while todo:
        p = todo.pop()
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return parser


def test_the_docs_show_the_commands_a_user_runs():
    assert len(COMMANDS) >= 40, COMMANDS
    for page in ("README.md", *(f"docs/{p}.md" for p in PAGES if p not in ("formats", "api"))):
        assert any(where.startswith(page + ":") for where, _ in COMMANDS), f"{page} shows no dsnas command"
    setup = [args for where, args in COMMANDS if where.startswith("README.md:")][0]
    assert setup == ["search"]  # the main job of the Set up section


@pytest.mark.parametrize("where,args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_shown_parses(where, args, capsys):
    try:
        parsed = strict_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: dsnas {shlex.join(args)}: {capsys.readouterr().err.strip()}")
    assert getattr(parsed, "func", None), f"{where}: dsnas {shlex.join(args)} names no command"


def config_key_problem(key: str) -> str | None:
    """Why ``key`` is not a configuration key that --set takes (None: it is one)."""
    from dsnas.config import _KEYS, FLAT_SPACE_KEYS
    from dsnas.spaces import space_class, space_names

    if key in _KEYS or key in FLAT_SPACE_KEYS:
        return None
    if key.startswith("space."):
        settings = {f.name for name in space_names() for f in dataclasses.fields(space_class(name).Settings)}
        if key[len("space."):] in settings:
            return None
        return f"{key[len('space.'):]} is a setting of no registered space"
    return "no such configuration key"


def set_keys(path: Path) -> list[str]:
    """The keys of every ``--set KEY=VALUE`` on the page, in its commands and its prose."""
    keys = [m.group(1) for m in re.finditer(r"--set[ =]['\"]?([A-Za-z_][\w.]*)=", path.read_text())]
    return [k for k in keys if not PLACEHOLDER.match(k)]


def test_every_set_key_is_a_configuration_key():
    shown = {(rel(path), key) for path in DOCS for key in set_keys(path)}
    assert len(shown) >= 20
    bad = [f"{page}: --set {key}=: {config_key_problem(key)}" for page, key in sorted(shown)
           if config_key_problem(key)]
    assert not bad, "\n".join(bad)


def test_the_key_check_refuses_what_the_configuration_refuses():
    assert config_key_problem("epochs") is None and config_key_problem("space.channels") is None
    assert config_key_problem("width") is None  # a flat key of older files still loads
    assert config_key_problem("epoch") and config_key_problem("space.chanels") and config_key_problem("space.epochs")


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def slug(heading: str) -> str:
    """The anchor the repository's host gives a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def links(path: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", prose(path))  # inline code is not a link
    return [m.group(1) for m in LINK.finditer(text)]


def test_every_relative_link_resolves():
    bad, count = [], 0
    for path in MARKDOWN:
        for target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            count += 1
            file, _, fragment = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{rel(path)}: {target} does not exist")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                bad.append(f"{rel(path)}: {target}: {rel(dest)} has no heading #{fragment}")
    assert count >= 50
    assert not bad, "\n".join(bad)


def test_the_docs_pages_are_there_and_the_readme_routes_to_them():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 16_000, len(readme)
    for page in PAGES:
        assert (ROOT / "docs" / f"{page}.md").is_file(), page
        assert f"(docs/{page}.md)" in readme, f"the README does not link docs/{page}.md"


def test_the_readme_keeps_the_set_up_commands_and_ci_runs_its_test_command():
    readme = (ROOT / "README.md").read_text()
    main_job = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/dsnas search"
    tests = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest -q"
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert f"```bash\n{main_job}\n```" in setup and f"```bash\n{tests}\n```" in setup
    assert tests in (ROOT / ".ci" / "run").read_text()


def public_names() -> list[str]:
    import dsnas

    return [n for n in dsnas.__all__ if n != "__version__"]


def test_every_public_name_has_a_docstring_and_a_line_in_the_api_page():
    import dsnas

    api = (ROOT / "docs" / "api.md").read_text()
    for name in public_names():
        obj = getattr(dsnas, name)
        doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
        generated = dataclasses.is_dataclass(obj) and (doc or "").startswith(f"{name}(")
        assert doc and doc.strip() and not generated, f"dsnas.{name} has no docstring"
        assert f"`{name}" in api, f"docs/api.md does not mention dsnas.{name}"


def test_the_api_pages_examples_run(capsys):
    examples = [text for lang, text, _ in code_blocks(ROOT / "docs" / "api.md") if lang == "python"]
    assert examples
    for text in examples:
        exec(compile(text, "docs/api.md", "exec"), {"__name__": "docs_api_example"})
    assert capsys.readouterr().out.strip()  # the example prints the architecture it derives


SHOWN = re.compile(r"<!-- file: (\S+) -->\n(```+|~~~+)[\w+-]*\n(.*?)^\2\s*$", re.S | re.M)


def test_the_files_a_page_shows_are_the_repositorys():
    shown = {}
    for path in DOCS:
        for m in SHOWN.finditer(path.read_text()):
            shown[m.group(1)] = m.group(3)
            assert (ROOT / m.group(1)).read_text() == m.group(3), \
                f"{rel(path)} shows {m.group(1)} other than it is; copy the file into the page again"
    assert {"examples/tiny_space/pyproject.toml", "examples/tiny_space/tiny_space.py"} <= set(shown)


def sections(text: str) -> dict[str, str]:
    found = re.findall(r"<!-- section:(\S+) -->\n(.*?)\n<!-- /section:\1 -->", text, re.S)
    names = [n for n, _ in found]
    assert len(names) == len(set(names)), "a section id is used twice"
    assert len(re.findall(r"<!-- section:", text)) == len(names), "a section marker is not closed"
    return dict(found)


def test_benchmarks_has_no_title_twice():
    titles = [line for line in prose(BENCHMARKS).splitlines() if re.match(r"^#{1,6} ", line)]
    repeated = sorted({t for t in titles if titles.count(t) > 1})
    assert not repeated, repeated


def summary_rows(text: str) -> list[list[str]]:
    head = text.split("\n\n", 2)
    assert head[0] == "# Benchmarks", "BENCHMARKS.md must open with its title"
    table = head[1].splitlines()
    assert table[0].startswith("| benchmark") and "headline figure" in table[0] and "goal" in table[0] \
        and "met or missed" in table[0], "BENCHMARKS.md must open with the summary table"
    assert re.match(r"^\|(-+\|)+$", table[1])
    return [[c.strip() for c in row.strip("|").split("|")] for row in table[2:]]


def test_benchmarks_opens_with_a_summary_whose_figures_are_its_sections():
    text = BENCHMARKS.read_text()
    body = sections(text)
    rows = summary_rows(text)
    assert len(rows) >= 20
    named = set()
    for benchmark, headline, goal, verdict in rows:
        ids = re.findall(r"`([a-z0-9_]+)`\)?$", benchmark)
        assert ids and ids[0] in body, f"the summary row {benchmark!r} names no section of BENCHMARKS.md"
        named.add(ids[0])
        missing = [n for n in re.findall(r"\d+(?:\.\d+)?", headline) if n not in body[ids[0]]]
        assert not missing, f"{benchmark}: {missing} are not in the section {ids[0]}"
        assert goal and verdict
    assert named == set(body), f"sections without a summary row: {sorted(set(body) - named)}"


def test_earlier_runs_are_kept_and_reachable():
    index = ROOT / "benchmarks" / "results" / "README.md"
    assert "](benchmarks/results/)" in BENCHMARKS.read_text(), "BENCHMARKS.md does not point at its earlier runs"
    listed = set(links(index))
    runs = [path for path in RESULTS if path != index]
    assert len(runs) >= 10
    for path in runs:
        assert path.name in listed, f"benchmarks/results/README.md does not list {path.name}"


@pytest.mark.slow
def test_the_quickstart_runs_as_written(tmp_path):
    commands = shell_commands(ROOT / "docs" / "quickstart.md")
    assert [args[0] for _, args in commands] == ["search", "eval", "export", "info"]
    for where, args in commands:
        p = subprocess.run([sys.executable, "-m", "dsnas", *args], cwd=tmp_path, env=cli_env(),
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{where}: dsnas {shlex.join(args)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    run = tmp_path / "runs" / "first"
    for name in ("arch.yaml", "child.safetensors", "metrics.json", "config.yaml", "alpha.csv", "alpha.png",
                 "credit.csv", "credit.png", "child.onnx", "checkpoints/last.pt", "tensorboard"):
        assert (run / name).exists(), name
