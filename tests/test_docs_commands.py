"""Every command shown in the README and docs/ is valid as written: `approvals …` lines parse with the real
click commands (an unknown command or option, a missing required one or a wrong choice fails here, with the
page and line; nothing runs), `make X` names a Makefile target, a `curl` of the service (and a `GET /path`
named in prose) reaches one of its routes, and a benchmark takes the options shown. Environment variables named in the docs are settings (or variables the code
reads), and every setting is in docs/configuration.md.

Commands come from fenced shell blocks (sh, bash, shell, console; unlabelled blocks only for their lines
that start with one of our commands) and from inline code spans that start with one. A span is often a
synopsis (`[--json]`, `a\\|b`, `--from --to`, `…`) or a mention of a command in prose (`approvals serve`),
so spans are expanded into concrete command lines first; fenced lines are parsed as they would be pasted.
Placeholders (`NAME`, `$ID`, `req_…`) get the plausible values of PLACEHOLDERS below."""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest

from app.cli.main import main as approvals_cli
from app.config import Settings, env_name
from tests.conftest import ROOT, start_service, stop_service

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

EXISTING_FILE = str(ROOT / "policies.yml")
REQUEST_ID = "req_0123456789abcdef01234567"  # the shape the service gives: req_ and 24 hex digits

# A documented placeholder -> a value that stands for it when the command is parsed. Values are what a
# reader would type, and of the type the option wants (click checks ranges and choices).
PLACEHOLDERS: dict[str, str] = {
    "NAME": "hiring-bot",  # an agent's or a key's name; also `--action NAME`
    "EMAIL": "ops@example.com",
    # FILE is read by some options (`audit verify --checkpoint` wants an existing file) and written by
    # others; parsing writes nothing, so an existing file serves both.
    "FILE": EXISTING_FILE,
    "REQUEST_ID": REQUEST_ID,
    "$ID": REQUEST_ID,  # the README's shell variable holding a request's id
    "<id>": REQUEST_ID,
    "req_…": REQUEST_ID,
    "SLACK_USER_ID": "U0123456789",
    "CHANNEL": "C0123456789",  # a Slack channel ID
    "TEXT": "sent by mistake",
    "S": "pending",  # `requests list --status S`
    "A": "send_offer_letter",  # `requests list --action A`
    "N": "10",
    "SECONDS": "60",
    "TIME": "2026-01-01T00:00:00+00:00",
    "DATE": "2026-01-01",
    "KIND": "action_refused",
    "URL": "http://127.0.0.1:8080",
    "COMMAND": "migrate",  # `approvals --debug COMMAND`: any command
}
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*|\$\{?[A-Za-z_]\w*\}?|<[^<>]+>|.+…")
SHELL_VARIABLE = re.compile(r"\$\{?([A-Za-z_]\w*)\}?")
ELLIPSES = {"...", "…"}  # a repetition mark, or a value left out (`--from … --to …`)

# Programs the docs' shell blocks run besides ours: each is someone else's, and not checked here.
OTHER_PROGRAMS = {
    "python3": "`python3 -c` one-liners that read a JSON answer",
    "echo": "the shell's",
    "sleep": "the shell's",
    "date": "for unique names and keys",
    "psql": "PostgreSQL's client, for grants",
}
# Hosts a documented curl may call that are not this service; anything else must be the service itself.
EXTERNAL_HOSTS = {"slack.com": "Slack's Web API, to look up user and group IDs"}
SERVICE_HOSTS = {"localhost", "127.0.0.1"}

SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
OUR_COMMAND = re.compile(
    rf"(\$ )?(\S*/)?(approvals|make|curl) |(\S*/)?python3? bench/|({'|'.join(HTTP_METHODS)}) /"
)
FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


@dataclass(frozen=True)
class Command:
    """One command line of a page. `inline`: a code span in prose (a synopsis or a mention of a command),
    not a line to paste."""

    page: str
    line: int
    words: tuple[str, ...]
    inline: bool

    def where(self) -> str:
        return f"{self.page}:{self.line}: `{shlex.join(self.words)}`"


# --- finding the commands ---------------------------------------------------------------------------------


def shell_commands(text: str, first_line: int) -> list[tuple[int, list[str]]]:
    """The simple commands of a shell script with the line each starts on: split at newlines, `;`, `&`,
    `|`, `&&`, `||` and parentheses; `$(…)` contributes its own commands and stands for a value (`0`) in
    its word; quotes and line continuations are resolved; comments, redirections, leading assignments
    (`KEY=…`) and loop keywords (`until … do … done`) are dropped."""
    commands: list[tuple[int, list[str]]] = []
    words: list[str] = []
    word: str | None = None
    line = first_line
    start = first_line
    redirect = False  # the next word is a redirection's target

    def end_word() -> None:
        nonlocal word, redirect, start
        if word is not None:
            if redirect:
                redirect = False
            else:
                if not words:
                    start = line
                words.append(word)
        word = None

    def end_command() -> None:
        end_word()
        while words and (
            re.match(r"[A-Za-z_]\w*=", words[0])
            or words[0] in {"until", "while", "if", "then", "else", "do", "!"}
        ):
            words.pop(0)
        if words and words[0] not in {"done", "fi"}:
            commands.append((start, list(words)))
        words.clear()

    def substitution(i: int) -> int:
        """Read the `$(…)` opening at i: add its commands, and return the index after its `)`."""
        nonlocal word, line
        depth, j, quote = 1, i + 2, ""
        while depth:
            if j >= len(text):
                raise ValueError(f"unclosed $( on line {line}")
            c = text[j]
            if quote:
                quote = "" if c == quote else quote
            elif c in "'\"":
                quote = c
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            j += 1
        commands.extend(shell_commands(text[i + 2 : j - 1], line))
        line += text.count("\n", i, j)
        word = (word or "") + "0"  # its output stands in the word
        return j

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            if text[i + 1] == "\n":
                line += 1
            else:
                word = (word or "") + text[i + 1]
            i += 2
            continue
        if c == "'":
            end = text.index("'", i + 1)
            line += text.count("\n", i, end)
            word = (word or "") + text[i + 1 : end]
            i = end + 1
            continue
        if c == '"':
            word = word or ""
            i += 1
            while text[i] != '"':
                if text[i] == "\\" and text[i + 1] in '"$`\\\n':
                    line += text[i + 1] == "\n"
                    word += "" if text[i + 1] == "\n" else text[i + 1]
                    i += 2
                elif text.startswith("$(", i):
                    i = substitution(i)
                else:
                    line += text[i] == "\n"
                    word += text[i]
                    i += 1
            i += 1
            continue
        if text.startswith("$(", i):
            i = substitution(i)
            continue
        if c == "#" and word is None:
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
            continue
        if c in "<>":
            if word is not None and word.isdigit():
                word = None  # a file descriptor: `2>&1`
            end_word()
            i += 1
            while i < len(text) and text[i] in "<>&":
                i += 1
            redirect = True  # the target (`/dev/null`, or the `1` of `>&1`) is the next word
            continue
        if c in " \t":
            end_word()
        elif c in "\n;&|()":
            end_command()
            line += c == "\n"
        else:
            word = (word or "") + c
        i += 1
    end_command()
    return commands


def block_commands(page: str, language: str, body: list[str], first_line: int) -> list[Command]:
    """The commands of one fenced block: every line of a shell block; only the `$ ` lines of a console
    block; only the lines that start with one of our commands in an unlabelled block."""
    if language not in SHELL_LANGUAGES and language != "":
        return []
    kept: list[str] = []
    continuing = False
    for raw in body:
        stripped = raw.lstrip()
        prompt = stripped.startswith("$ ")
        if language == "console":
            keep = prompt or continuing
        elif language == "":
            keep = bool(OUR_COMMAND.match(stripped)) or continuing
        else:
            keep = True
        kept.append((stripped[2:] if prompt else raw) if keep else "")
        continuing = keep and raw.rstrip().endswith("\\")
    return [
        Command(page, line, tuple(words), inline=False)
        for line, words in shell_commands("\n".join(kept), first_line)
    ]


def commands_in_text(page: str, text: str) -> list[Command]:
    """Every command of a page: its fenced shell blocks, then its inline code spans that start with one
    of our commands (outside the blocks)."""
    lines = text.split("\n")
    prose = list(lines)
    found: list[Command] = []
    i = 0
    while i < len(lines):
        opening = FENCE_OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening.group(1)
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            j += 1
        found += block_commands(page, opening.group(2).lower(), lines[i + 1 : j], first_line=i + 2)
        for k in range(i, min(j + 1, len(lines))):
            prose[k] = ""  # blanked, not removed: spans keep their line numbers
        i = j + 1
    joined = "\n".join(prose)
    for span in CODE_SPAN.finditer(joined):
        content = span.group(2).replace("\n", " ").strip()
        if OUR_COMMAND.match(content):
            line = joined.count("\n", 0, span.start()) + 1
            # A table cell escapes its pipes; shlex keeps `a|b` (alternatives) as one word.
            words = shlex.split(content.replace("\\|", "|"))
            found.append(Command(page, line, tuple(words), inline=True))
    return found


def commands_in(page: Path) -> list[Command]:
    return commands_in_text(str(page.relative_to(ROOT)), page.read_text())


def program(words: tuple[str, ...] | list[str]) -> str:
    """Which checker a command line belongs to: approvals, make, curl, bench, endpoint (`GET /path` in
    prose), other (someone else's program, see OTHER_PROGRAMS) or unknown."""
    if words[0] in HTTP_METHODS and len(words) == 2:
        return "endpoint"
    executable = words[0].rsplit("/", 1)[-1]
    if executable in {"approvals", "make", "curl"}:
        return executable
    if executable.startswith("python") and len(words) > 1 and words[1].startswith("bench/"):
        return "bench"
    return "other" if executable in OTHER_PROGRAMS else "unknown"


# --- synopses and placeholders ----------------------------------------------------------------------------


def forms(words: list[str], alternatives: bool) -> list[list[str]]:
    """The concrete command lines a synopsis stands for: every optional `[…]` part in, and every one out;
    with `alternatives`, one line per choice of each `a|b|c` (`--opt=a|b` keeps its `--opt=`)."""
    joined = "\0".join(words)
    longest = joined.replace("[", "").replace("]", "")
    shortest = joined
    while re.search(r"\[[^\[\]]*\]", shortest):
        shortest = re.sub(r"\[[^\[\]]*\]", "", shortest)
    results: list[list[str]] = []
    for form in dict.fromkeys([longest, shortest]):
        tokens = [token for token in form.split("\0") if token]
        choices: list[list[str]] = []
        for token in tokens:
            if alternatives and "|" in token:
                prefix, eq, rest = token.rpartition("=") if "=" in token.split("|")[0] else ("", "", token)
                choices.append([prefix + eq + choice for choice in rest.split("|")])
            else:
                choices.append([token])
        results += [list(choice) for choice in itertools.product(*choices)]
    return results


def substitute(words: list[str]) -> tuple[list[str], list[str]]:
    """Placeholders replaced by their PLACEHOLDERS value; the second list names those it does not know."""
    unknown = [w for w in words if w not in ELLIPSES and PLACEHOLDER.fullmatch(w) and w not in PLACEHOLDERS]
    return [PLACEHOLDERS.get(w, w) for w in words], unknown


def plausible(option: click.Option) -> str:
    """A value of the option's type, for a value a synopsis leaves out (`--from --to`, `--purpose ...`)."""
    kind = option.type
    if isinstance(kind, click.Choice):
        return str(kind.choices[0])
    if isinstance(kind, click.types.IntParamType):
        return str(max(getattr(kind, "min", None) or 1, 1))
    if isinstance(kind, click.Path):
        return EXISTING_FILE
    return "x"


def fill_values(command: click.Command, args: list[str], synopsis: bool) -> list[str]:
    """A `…` after an option that takes a value is that value (made plausible); any other `…` marks a
    repetition and goes. In a synopsis an option shown without its value (`[--from --to]`) gets one."""
    takes_value = {
        name: param
        for param in command.params
        if isinstance(param, click.Option) and not param.is_flag and not param.count
        for name in param.opts
    }
    filled: list[str] = []
    for index, arg in enumerate(args):
        if arg in ELLIPSES:
            if filled and filled[-1] in takes_value:
                filled.append(plausible(takes_value[filled[-1]]))
            continue
        filled.append(arg)
        following = args[index + 1] if index + 1 < len(args) else None
        if synopsis and arg in takes_value and (following is None or following.startswith("-")):
            filled.append(plausible(takes_value[arg]))
    return filled


# --- the checkers -----------------------------------------------------------------------------------------


def check_cli_line(args: list[str], mention: bool) -> list[str]:
    """Parse one concrete `approvals` line with the real commands, group by group, as click would before
    running it (nothing runs). `mention`: a span in prose may name a command without its arguments."""
    command: click.Command = approvals_cli
    name = "approvals"
    parent: click.Context | None = None
    try:
        while True:
            args = fill_values(command, args, synopsis=mention)
            if mention and not args:
                return []  # `approvals agents add` in prose names the command, it is not a line to run
            if isinstance(command, click.Group) and not args:
                return ["Missing command."]
            context = command.make_context(name, list(args), parent=parent)
            if not isinstance(command, click.Group):
                missing = [
                    param.opts[0]
                    for param in command.params
                    # Such options are checked by the command itself, to fail in one line; hold docs to them too.
                    if isinstance(param, click.Option)
                    and (param.help or "").startswith("[required]")
                    and context.params.get(param.name or "") is None
                ]
                return [f"Missing option {', '.join(missing)} (required)"] if missing else []
            # A group's options are flags, so what it left unparsed (context.args) follows the
            # subcommand's name, which is the word just before it.
            used = len(args) - len(context.args)
            if used == 0 or args[used - 1].startswith("-"):
                return [] if mention else ["Missing command."]
            found, sub, _ = command.resolve_command(context, [args[used - 1]])
            assert sub is not None and found is not None
            command, name, parent, args = sub, found, context, list(context.args)
    except click.exceptions.Exit as stop:  # `--version` prints and stops, as it should
        return [] if stop.exit_code == 0 else [f"exits {stop.exit_code}"]
    except click.ClickException as error:
        return [error.format_message()]


def check_cli(words: tuple[str, ...] | list[str], inline: bool) -> list[str]:
    """Every concrete line an `approvals` command (or synopsis) stands for parses."""
    problems: list[str] = []
    for form in forms(list(words[1:]), alternatives=inline):
        args, unknown = substitute(form)
        if unknown:
            problems += [
                f"unknown placeholder {w}: add it to PLACEHOLDERS in {Path(__file__).name}" for w in unknown
            ]
            continue
        problems += [p for p in check_cli_line(args, mention=inline) if p not in problems]
    return problems


@cache
def makefile_targets() -> set[str]:
    rules = re.findall(r"^([^\s:#=][^:#=]*):(?!=)", (ROOT / "Makefile").read_text(), re.M)
    return {target for rule in rules for target in rule.split()}


@cache
def make_dry_run(target: str) -> subprocess.CompletedProcess[str]:
    # -n prints the recipe without running it; -o keeps the venv stamp from being remade.
    return subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def check_make(words: tuple[str, ...] | list[str]) -> list[str]:
    """Each target is the Makefile's; the `approvals` and benchmark lines of its recipe are checked too."""
    targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    if not targets:
        return ["name a target"]
    problems: list[str] = []
    for target in targets:
        if target not in makefile_targets():
            # Checked first: make would take a file or directory of that name (`make tests`) for done.
            problems.append(f"the Makefile has no target {target}")
            continue
        result = make_dry_run(target)
        if result.returncode != 0:
            problems.append(result.stderr.strip().splitlines()[-1])
            continue
        for _, recipe in shell_commands(result.stdout, 1):
            if program(recipe) == "approvals":
                problems += [
                    f"`{shlex.join(recipe)}` (recipe of {target}): {p}" for p in check_cli(recipe, False)
                ]
            elif program(recipe) == "bench":
                problems += [f"(recipe of {target}): {p}" for p in check_bench([recipe])[0]]
    return problems


def check_bench(lines: list[tuple[str, ...] | list[str]]) -> list[list[str]]:
    """A benchmark line's script exists and takes its options, at their types: each form runs the script
    with `--help` after them (argparse converts values as it reads them, and prints the options it has).
    The scripts start concurrently: each takes a few seconds to import."""
    runs: list[tuple[int, list[str], subprocess.Popen[str]]] = []
    problems: list[list[str]] = [[] for _ in lines]
    for index, words in enumerate(lines):
        script = ROOT / words[1]
        if not script.is_file():
            problems[index].append(f"no script {words[1]}")
            continue
        for form in forms(list(words[2:]), alternatives=False):
            args = [w for w in form if w not in ELLIPSES]
            command = [sys.executable, str(script), *args, "--help"]
            runs.append(
                (
                    index,
                    args,
                    subprocess.Popen(
                        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                    ),
                )
            )
    for index, args, proc in runs:
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            problems[index].append(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
            continue
        for option in (a.split("=")[0] for a in args if a.startswith("--")):
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", out):
                problems[index].append(f"no option {option}")
    return problems


CURL_SHORT_VALUE = set("AbcdeEFHKmorTuwxX")  # short options that take a value
CURL_LONG_VALUE = {
    "--data",
    "--data-raw",
    "--data-binary",
    "--data-urlencode",
    "--json",
    "--form",
    "--header",
    "--request",
    "--output",
    "--user",
    "--write-out",
    "--max-time",
    "--connect-timeout",
    "--retry",
    "--url",
    "--upload-file",
}
CURL_BODY = {"d", "F", "--data", "--data-raw", "--data-binary", "--data-urlencode", "--json", "--form"}


def curl_request(words: tuple[str, ...] | list[str]) -> tuple[str, str]:
    """The method and URL a curl line sends (curl's defaults: GET, POST with a body, PUT with -T)."""
    method, url, body = "", "", False
    i = 1
    while i < len(words):
        word = words[i]
        names: list[tuple[str, str | None]] = []  # (option, its value)
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name in CURL_LONG_VALUE and not eq:
                i += 1
                value = words[i]
            names.append((name, value if name in CURL_LONG_VALUE else None))
        elif word.startswith("-") and len(word) > 1:
            for k, letter in enumerate(word[1:]):
                if letter in CURL_SHORT_VALUE:
                    rest = word[k + 2 :]
                    if not rest:
                        i += 1
                    names.append((letter, rest or words[i]))
                    break
                names.append((letter, None))
        elif not url:
            url = word
        for name, given in names:
            if name in {"X", "--request"}:
                method = given or ""
            elif name in CURL_BODY:
                body = True
            elif name in {"T", "--upload-file"}:
                method = method or "PUT"
            elif name in {"I", "--head"}:
                method = "HEAD"
            elif name == "--url":
                url = given or ""
        i += 1
    return method or ("POST" if body else "GET"), url


def route_pattern(canonical: str) -> re.Pattern[str]:
    """An aiohttp route's path as a regex: `{name}` is one segment, `{name:regex}` its regex."""
    pattern, position = "", 0
    for variable in re.finditer(r"\{\w+(?::([^{}]+))?\}", canonical):
        pattern += re.escape(canonical[position : variable.start()]) + f"(?:{variable.group(1) or '[^/]+'})"
        position = variable.end()
    return re.compile(pattern + re.escape(canonical[position:]))


def check_curl(words: tuple[str, ...] | list[str], routes: list[tuple[str, str]]) -> list[str]:
    """A curl of the service (localhost, 127.0.0.1) names a method and path one of its routes serves."""
    try:
        method, url = curl_request(words)
    except IndexError:
        return ["an option lacks its value"]
    for variable in SHELL_VARIABLE.findall(url):
        if f"${variable}" not in PLACEHOLDERS:
            return [f"unknown variable ${variable}: add it to PLACEHOLDERS in {Path(__file__).name}"]
    url = SHELL_VARIABLE.sub(lambda m: PLACEHOLDERS[f"${m.group(1)}"], url)
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    if any(host == h or host.endswith(f".{h}") for h in EXTERNAL_HOSTS):
        return []
    if host not in SERVICE_HOSTS:
        return [
            f"{host or url!r} is neither the service ({', '.join(sorted(SERVICE_HOSTS))}) nor in EXTERNAL_HOSTS"
        ]
    return check_route(method, parts.path or "/", routes)


def check_endpoint(words: tuple[str, ...] | list[str], routes: list[tuple[str, str]]) -> list[str]:
    """`GET /v1/requests/{id}[?wait=N]` in prose: the method and path of one of the routes."""
    path = re.sub(r"\[[^\[\]]*\]", "", words[1]).split("?")[0]
    return check_route(words[0], re.sub(r"\{\w+\}", "x", path), routes)


def check_route(method: str, path: str, routes: list[tuple[str, str]]) -> list[str]:
    methods = {m for m, canonical in routes if route_pattern(canonical).fullmatch(path)}
    if not methods:
        return [f"the service has no route for {path}"]
    if method not in methods and "*" not in methods:
        return [f"{path} answers {', '.join(sorted(methods))}, not {method}"]
    return []


def is_service_curl(words: tuple[str, ...]) -> bool:
    url = curl_request(words)[1]
    return (urlsplit(url if "://" in url else f"http://{url}").hostname or "") in SERVICE_HOSTS


async def service_routes(database_url: str) -> list[tuple[str, str]]:
    """The (method, path pattern) of every route of the service as the tests build it (no Slack, no IdP)."""
    container, server = await start_service(database_url)
    try:
        return [
            (route.method, route.resource.canonical) for route in server.app.router.routes() if route.resource
        ]
    finally:
        await stop_service(container, server)


VARIABLE = re.compile(r"\b(?:APPROVALS|SLACK|OIDC)_[A-Z0-9_]*")
# Names in the docs that look like variables but are placeholders for one.
NOT_VARIABLES = {"APPROVALS_NAME": "`--set APPROVALS_NAME=VALUE` of bench/intake.py: any setting"}
CODE = [
    p for d in ("app", "tests", "bench") for p in (ROOT / d).rglob("*.py") if p != Path(__file__).resolve()
]


@cache
def read_by_code(name: str) -> bool:
    """The variable is a string literal of the code (tests, benchmarks and failpoints read a few)."""
    return any(f'"{name}"' in path.read_text() for path in CODE)


def unknown_variable(name: str) -> str | None:
    """Why a variable named in the docs is unknown, or None: a setting, a prefix of some (`APPROVALS_OIDC_*`),
    a placeholder, or a variable the code reads."""
    settings = {env_name(field) for field in Settings.model_fields}
    if name in settings or name in NOT_VARIABLES or name in PLACEHOLDERS:
        return None
    if name.endswith("_") and any(s.startswith(name) for s in settings):
        return None
    if read_by_code(name):
        return None
    return f"{name} is not a setting of app/config.py nor read by the code"


# --- the tests --------------------------------------------------------------------------------------------


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_commands_are_found() -> None:
    """The finder sees the README's commands, synopses in tables and the benchmark lines."""
    found = {c.page: c for page in PAGES for c in commands_in(page)}
    assert {"README.md", "docs/cli.md", "docs/benchmarks.md", "docs/development.md"} <= set(found)
    readme = [c.words for c in commands_in(README)]
    assert ("make", "run") in readme and ("make", "test") in readme
    assert any(
        w[0] == ".venv/bin/approvals" and w[1:3] == ("agents", "add") and "--risk" in w for w in readme
    )
    assert sum(program(w) == "curl" for w in readme) >= 3
    every = [c for page in PAGES for c in commands_in(page)]
    assert sum(program(c.words) == "approvals" for c in every) >= 60, len(every)


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_command_of_the_page_is_valid(page: Path) -> None:
    problems: list[str] = []
    commands = commands_in(page)
    for command in commands:
        kind = program(command.words)
        if kind == "approvals":
            problems += [f"{command.where()}: {p}" for p in check_cli(command.words, command.inline)]
        elif kind == "make":
            problems += [f"{command.where()}: {p}" for p in check_make(command.words)]
        elif kind == "unknown":
            problems.append(
                f"{command.where()}: {command.words[0]} is no program the docs run (OTHER_PROGRAMS)"
            )
    benches = [c for c in commands if program(c.words) == "bench"]
    for command, found in zip(benches, check_bench([c.words for c in benches]), strict=True):
        problems += [f"{command.where()}: {p}" for p in found]
    assert not problems, "\n".join(problems)


async def test_every_curl_and_endpoint_of_the_service_names_one_of_its_routes(database_url: str) -> None:
    routes = await service_routes(database_url)
    every = [c for page in PAGES for c in commands_in(page)]
    curls = [c for c in every if program(c.words) == "curl"]
    endpoints = [c for c in every if program(c.words) == "endpoint"]
    assert sum(is_service_curl(c.words) for c in curls) >= 3  # the README's, at least
    assert len(endpoints) >= 10  # agent-api.md's and operations.md's, at least
    problems = [f"{c.where()}: {p}" for c in curls for p in check_curl(c.words, routes)]
    problems += [f"{c.where()}: {p}" for c in endpoints for p in check_endpoint(c.words, routes)]
    assert not problems, "\n".join(problems)


def test_every_variable_named_in_the_docs_exists() -> None:
    problems = []
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            problems += [
                f"{name(page)}:{number}: {p}" for v in VARIABLE.findall(line) if (p := unknown_variable(v))
            ]
    assert not problems, "\n".join(problems)


def test_every_setting_is_in_the_configuration_table() -> None:
    table = "\n".join(
        line for line in (ROOT / "docs/configuration.md").read_text().splitlines() if line.startswith("|")
    )
    missing = [env_name(f) for f in Settings.model_fields if f"`{env_name(f)}`" not in table]
    assert not missing, f"docs/configuration.md's table lacks {', '.join(missing)}"
    assert len(Settings.model_fields) >= 25


def test_the_finder_splits_shell_as_bash_would() -> None:
    text = """# Setup
```sh
make run > approvals.log 2>&1 &
until curl -sf localhost:8080/readyz > /dev/null; do sleep 1; done
KEY=$(.venv/bin/approvals agents add "bot-$(date +%s)" --owner o@example.com \\
    --actions 'a,b' --json | python3 -c 'import sys; print(sys.stdin.read())')
echo "id: $(approvals requests show $ID --json)"  # a comment
```
Run `approvals agents list [--json]`, not `approvals`, and ``make  test``.
```console
$ approvals migrate
output line
```
```
approvals policies check
not a command
```
"""
    found = [(c.line, c.words, c.inline) for c in commands_in_text("x.md", text)]
    assert found == [
        (3, ("make", "run"), False),
        (4, ("curl", "-sf", "localhost:8080/readyz"), False),
        (4, ("sleep", "1"), False),
        (5, ("date", "+%s"), False),
        (
            5,
            (
                ".venv/bin/approvals",
                "agents",
                "add",
                "bot-0",
                "--owner",
                "o@example.com",
                "--actions",
                "a,b",
                "--json",
            ),
            False,
        ),
        (6, ("python3", "-c", "import sys; print(sys.stdin.read())"), False),
        (7, ("approvals", "requests", "show", "$ID", "--json"), False),
        (7, ("echo", "id: 0"), False),
        (11, ("approvals", "migrate"), False),
        (15, ("approvals", "policies", "check"), False),
        (9, ("approvals", "agents", "list", "[--json]"), True),
        (9, ("make", "test"), True),
    ]


@pytest.mark.parametrize(
    ("line", "inline", "error"),
    [
        ("approvals agnets list", False, "No such command 'agnets'"),
        ("approvals agents ad bot", False, "No such command 'ad'"),
        ("approvals audit verify --strickt", False, "No such option '--strickt'"),
        ("approvals agents add bot --owner o@example.com", False, "Missing option '--actions'"),
        ("approvals agents add bot --owner o@x --actions a --risk extreme", False, "'extreme' is not one of"),
        ("approvals requests show", False, "Missing argument 'REQUEST_ID'"),
        ("approvals audit report --from DATE --to DATE", False, "--out"),
        ("approvals agents rotate bot --grace forever", False, "'forever' is not a valid integer"),
        ("approvals agents", False, "Missing command"),
        ("approvals agents list WIDGET", False, "unknown placeholder WIDGET"),
        ("approvals serve [--sandbox[=on|auto|never]]", True, "'never' is not one of"),
        ("approvals identities list|unlnk", True, "No such command 'unlnk'"),
        ("approvals audit export [--agent --polcy]", True, "No such option '--polcy'"),
        ("approvals --debugg migrate", True, "No such option '--debugg'"),
    ],
)
def test_the_cli_checker_catches_bad_commands(line: str, inline: bool, error: str) -> None:
    problems = check_cli(shlex.split(line), inline)
    assert any(error in p for p in problems), problems


def test_the_cli_checker_passes_good_synopses_and_mentions() -> None:
    for line in [
        "approvals --version",
        "approvals --debug …",
        "approvals agents add",  # a mention
        "approvals audit events --kind KIND [--kind …] [--from --to] [--json]",
        "approvals agents add NAME --owner EMAIL --actions a,b [--purpose ...] [--risk low|medium|high]",
        "approvals audit verify [--checkpoint FILE] [--witness FILE ...] [--as-of TIME]",
    ]:
        assert check_cli(shlex.split(line), True) == [], line
    assert check_cli(shlex.split("approvals requests show req_…"), False) == []


def test_the_other_checkers_catch_bad_commands() -> None:
    assert check_make(["make", "deploy"]) == ["the Makefile has no target deploy"]
    assert check_make(["make", "tests"]) == ["the Makefile has no target tests"]  # a directory, not a target
    assert {"run", "test", "lint", "bench"} <= makefile_targets()
    assert check_make(["make", "lint"]) == []
    bench = check_bench(
        [
            (".venv/bin/python", "bench/intake.py", "--rounds", "3"),
            (".venv/bin/python", "bench/intake.py", "--roundz", "3"),
            (".venv/bin/python", "bench/intake.py", "--rounds", "three"),
            (".venv/bin/python", "bench/nope.py"),
        ]
    )
    assert bench[0] == [] and bench[1] and "three" in bench[2][0] and bench[3] == ["no script bench/nope.py"]
    assert unknown_variable("APPROVALS_PORT") is None and unknown_variable("APPROVALS_OIDC_") is None
    assert unknown_variable("APPROVALS_PORTT") and unknown_variable("SLACK_TOKEN")


async def test_the_curl_checker_catches_bad_requests(database_url: str) -> None:
    routes = await service_routes(database_url)
    good = [
        "curl -s localhost:8080/healthz",
        "curl -s localhost:8080/v1/requests -d '{}'",
        "curl -s \"localhost:8080/v1/requests/$ID?wait=30\" -H 'Authorization: Bearer k'",
        "curl -sX POST http://127.0.0.1:8080/v1/requests/$ID/cancel",
        "curl -s https://slack.com/api/users.list",
    ]
    for line in good:
        assert check_curl(shlex.split(line), routes) == [], line
    bad = {
        "curl -s localhost:8080/v2/requests": "no route for /v2/requests",
        "curl -s -X DELETE localhost:8080/v1/requests/$ID": "answers GET",
        "curl -s localhost:8080/v1/requests/$ID/cancel": "answers POST, not GET",
        "curl -s localhost:8080/v1/requests/$REQUEST": "unknown variable $REQUEST",
        "curl -s https://example.org/v1/requests": "'example.org' is neither the service",
    }
    for line, error in bad.items():
        assert any(error in p for p in check_curl(shlex.split(line), routes)), line
    assert check_endpoint(["GET", "/v1/requests/{id}[?wait=N]"], routes) == []
    assert check_endpoint(["POST", "/v1/requests/{id}/cancel"], routes) == []
    assert check_endpoint(["GET", "/v1/requests/{id}/cancel"], routes) == [
        "/v1/requests/x/cancel answers POST, not GET"
    ]
    assert check_endpoint(["GET", "/v1/audit/chain"], routes) == [
        "the service has no route for /v1/audit/chain"
    ]
