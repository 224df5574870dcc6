"""README.md is what a new user reads first, and what it shows must be true of the code: its Python examples run as
written, every public name is in it, its command table names each command's own flags, all of them, its policy
file loads as its comments say, and what it (or a comment anywhere) points at exists: modules, events, fields,
tests, SPEC sections."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import brokerless
import streams
from streams import errors, events
from streams.cli import build_parser
from tests.cliutil import Cli, make_keystore

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PASS = "readme passphrase 5d1e"
#: What the README says once for every command, above its table: not repeated in each row.
COMMON_FLAGS = {"-h", "--help", "--json", "-v", "--verbose", "--passphrase-env", "--passphrase-file"}


def _code_words() -> set[str]:
    """Every identifier inside the README's code: inline spans and fenced blocks."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", README, re.S | re.M)
    unfenced = re.sub(r"^```[a-z]*\n.*?^```", "", README, flags=re.S | re.M)
    spans = re.findall(r"`([^`]+)`", unfenced)  # (a span may wrap onto the next line)
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(fenced + spans)))


def test_every_error_and_event_is_exported_from_streams() -> None:
    """``streams.__all__`` is the public API (its docstring): an error a caller has to catch, or raise from its own
    policy, and an event a party yields, must be importable from there."""
    exported = set(streams.__all__)
    assert sorted(set(errors.__all__) - exported) == []
    assert sorted(set(events.__all__) - exported) == []
    for name in streams.__all__:
        assert hasattr(streams, name), name


@pytest.mark.parametrize("module", [streams, brokerless], ids=lambda m: m.__name__)
def test_every_public_name_is_in_the_readme(module: ModuleType) -> None:
    """A name exported for users that the README never shows is one they will not find (or will take for
    internal)."""
    words = _code_words()
    assert sorted(n for n in module.__all__ if n != "__version__" and n not in words) == []


@pytest.mark.parametrize("cls", [streams.Author, streams.Subscriber], ids=lambda c: c.__name__)
def test_every_public_method_of_the_parties_is_in_the_readme(cls: type) -> None:
    words = _code_words()
    assert sorted(n for n in dir(cls) if not n.startswith("_") and n not in words) == []


PYTHON_EXAMPLES = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def test_readme_has_python_examples() -> None:
    """(So that the test below cannot pass by finding none.)"""
    assert len(PYTHON_EXAMPLES) >= 2


@pytest.mark.parametrize("code", PYTHON_EXAMPLES, ids=[f"example_{i + 1}" for i in range(len(PYTHON_EXAMPLES))])
def test_readme_python_examples_run_as_written(code: str, tmp_path: Path) -> None:
    """Each "Using the library" example, copied into a file and run in a fresh directory, in its own process."""
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    did, seq, signed, payload = r.stdout.strip().split(" ", 3)
    assert did.startswith("did:key:z6Mk") and seq == "1" and signed == "True"
    assert payload == "b'{\"payment\": 1, \"amount_eur\": 42}'"
    assert (tmp_path / "monitor.db").is_file() and (tmp_path / "provider.db").is_file()


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> \
        dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every leaf command of ``parser``: its words -> its parser."""
    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_subcommands(sub, (*prefix, name)))
            return out
    return {prefix: parser}


def _table_rows() -> dict[tuple[str, ...], str]:
    """The README's command table: command words -> the whole row (usage and description)."""
    rows: dict[tuple[str, ...], str] = {}
    for line in README.splitlines():
        m = re.match(r"\| `streams ((?:[a-z][a-z-]* ?)+)", line)
        if m:
            rows[tuple(m.group(1).split())] = line
    return rows


def test_readme_command_table_matches_the_parsers() -> None:
    """Every command has a row; every flag a row names is one its command takes, and every flag a command takes
    (but the common ones said above the table) is in its row."""
    commands = _subcommands(build_parser())
    rows = _table_rows()
    assert sorted(rows) == sorted(commands)
    problems = []
    for words, row in rows.items():
        takes = {s for a in commands[words]._actions if a.help != argparse.SUPPRESS  # (hidden: internal, refusals)
                 for s in a.option_strings} - COMMON_FLAGS
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", row)) - COMMON_FLAGS
        if named - takes:
            problems.append(f"streams {' '.join(words)}: README names {sorted(named - takes)}, which it does not take")
        if takes - named:
            problems.append(f"streams {' '.join(words)}: takes {sorted(takes - named)}, not in the README")
    assert problems == [], "\n".join(problems)


def test_every_config_field_and_test_the_readme_names_exists() -> None:
    """What the README tells a user to set (``CoreConfig.ack_interval_ms``, ``handshake_hold_ms``, ...) is a field of
    one of the configuration classes, and what its threat table cites as the proof of a property is a test file or
    test (a prefix, with ``*``) that exists: a renamed field or test must not leave the README pointing at
    nothing."""
    from brokerless import EndpointConfig
    from streams.anchoring_service import AnchorConfig
    from streams.api import StoreOptions
    from streams.core import CoreConfig

    classes: dict[str, type] = {c.__name__: c for c in (AnchorConfig, CoreConfig, EndpointConfig, StoreOptions)}
    fields = {f for c in classes.values() for f in vars(c).get("__dataclass_fields__", {})}
    words = _code_words()
    problems = [f"{cls}.{attr}" for cls, attr in re.findall(r"\b([A-Z][A-Za-z]*Config|StoreOptions)\.([a-z_]+)", README)
                if cls in classes and not hasattr(classes[cls], attr)]
    problems += [w for w in words if w.endswith("_ms") and w != "now_ms" and w not in fields]
    assert {"handshake_hold_ms", "checkpoint_interval_ms"} <= words  # (so that the check above checks something)
    tests_dir = ROOT / "tests"
    sources = "\n".join(f.read_text(encoding="utf-8") for f in tests_dir.glob("test_*.py"))
    for cited in re.findall(r"`(?:[a-z_]+\.py::)?(test_[A-Za-z0-9_]*\*?)`|`(test_[a-z0-9_]+\.py)`", README):
        name, file = cited
        if file:
            if not (tests_dir / file).is_file():
                problems.append(file)
        elif not re.search(rf"^(?:async )?def {re.escape(name.rstrip('*'))}{'' if name.endswith('*') else '[(]'}",
                           sources, re.M):
            problems.append(name)
    assert problems == []


def _ready_keys(function: str) -> list[str]:
    """The keys of the ``{"event": "ready", ...}`` line that ``function`` of ``streams/_cli/channel.py`` emits, in
    order (read from the source: running ``serve`` and ``tail`` costs seconds; tests/test_cli_channel.py runs them)."""
    tree = ast.parse((ROOT / "streams" / "_cli" / "channel.py").read_text(encoding="utf-8"))
    [fn] = [n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef) and n.name == function]
    found = [[k.value for k in d.keys if isinstance(k, ast.Constant)] for d in ast.walk(fn) if isinstance(d, ast.Dict)
             and any(isinstance(k, ast.Constant) and k.value == "event" and isinstance(v, ast.Constant)
                     and v.value == "ready" for k, v in zip(d.keys, d.values, strict=True))]
    assert len(found) == 1, (function, found)
    return found[0]


def test_readme_ready_lines_name_the_fields_serve_and_tail_print() -> None:
    """README: serve's first line is ``{"event": "ready", "channel": ..., ...}``, and tail's has "the first N" of its
    fields only.  (It said "the first three" after serve's gained ``name``, which tail's does not have.)"""
    [serve_doc] = re.findall(r'`(\{"event": "ready", [^`]*\})` first', README)
    assert re.findall(r'"([a-z_]+)":', serve_doc) == _ready_keys("serve")
    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
    [n] = re.findall(r"`tail`'s with the first ([a-z]+) only", README)
    assert _ready_keys("_tail") == _ready_keys("serve")[:1 + words[n]]


def test_every_spec_section_cited_exists() -> None:
    """A comment, docstring or document that cites "SPEC 8.3" (or SPEC.md its own "section 9.5") sends the reader
    to a heading of SPEC.md: each one cited must exist (renumbered or invented sections left readers at nothing:
    tests cited subsections 5.1-5.3 where section 5 has numbered rules, no subsections)."""
    spec = (ROOT / "SPEC.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^##+ (\d+(?:\.\d+)?)\.? ", spec, re.M))
    assert {"5", "8.3", "14.5"} <= sections  # (so that the check below checks something)
    files = [ROOT / "README.md", ROOT / "SPEC.md"] + [f for d in ("streams", "brokerless", "tests", "fuzz", "chaos",
                                                                  "bench") for f in (ROOT / d).rglob("*.py")]
    cited: dict[str, set[str]] = {}
    for f in files:
        text = f.read_text(encoding="utf-8")
        refs = re.findall(r"\bSPEC(?:\.md)?,? (?:section )?(\d+(?:\.\d+)?)\b", text)
        if f.name == "SPEC.md":
            refs += re.findall(r"(?<!RFC \d{4} )\bsections? (\d+(?:\.\d+)?)\b", text)  # (not RFC 9162's)
        for ref in refs:
            cited.setdefault(ref, set()).add(str(f.relative_to(ROOT)))
    assert len(cited) > 20
    assert {ref: sorted(where) for ref, where in cited.items() if ref not in sections} == {}


def test_the_layout_table_names_every_module() -> None:
    """README's Layout table is where a reader looks for a module: each module of the packages is in it by its
    path, or by the directory it is in (``streams/ledger/``, ``brokerless/``)."""
    layout = README.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:streams|brokerless)/[A-Za-z0-9_/.]*)`", layout))
    assert "streams/core.py" in named  # (so that the check below checks something)
    missing = [str(p.relative_to(ROOT)) for d in ("streams", "brokerless") for p in sorted((ROOT / d).rglob("*.py"))
               if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in named
               and not any(str(p.relative_to(ROOT)).startswith(n) for n in named if n.endswith("/"))]
    assert missing == []


def test_readme_names_every_event_serve_and_tail_print() -> None:
    """README lists the ``"event"`` values of serve's and tail's JSON lines: each one the CLI prints (read from the
    dict literals of ``streams/_cli/``) is in that list, so a script author knows every line it may meet."""
    printed = set()
    for f in (ROOT / "streams" / "_cli").glob("*.py"):
        for d in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(d, ast.Dict):
                printed |= {v.value for k, v in zip(d.keys, d.values, strict=True) if isinstance(k, ast.Constant)
                            and k.value == "event" and isinstance(v, ast.Constant) and isinstance(v.value, str)}
    assert {"ready", "message", "stopped", "done"} <= printed  # (so that the check below checks something)
    listed = README.split("`serve` and `tail` stream:", 1)[1].split("\n\n", 1)[0]
    assert sorted(e for e in printed if f"`{e}`" not in listed and f'"event": "{e}"' not in listed) == []


def test_readme_policy_file_example_loads(tmp_path: Path) -> None:
    """The policy file the README shows, its ``did:key:z6Mk...`` placeholders filled in (deny, allow, issuer) and
    its status list written, loads as it says: mode, deny-list, an allow rule and a credential rule with their
    permissions, the list relative to the file, the status ledger."""
    import json

    from streams.credentials import StatusList, issue_status_list_credential
    from streams.policy_file import load_policy

    [example] = re.findall(r"^```toml\n(.*?)^```", README, re.S | re.M)
    denied, allowed, issuer = (streams.Identity.from_seed(bytes([i]) * 32) for i in (7, 8, 9))
    dids = iter([denied.did, allowed.did, issuer.did])
    (tmp_path / "policy.toml").write_text(re.sub(r"did:key:z6Mk\.\.\.", lambda m: next(dids), example))
    status = issue_status_list_credential(issuer, "https://example.com/status/1", StatusList(),
                                          valid_from="2026-01-01T00:00:00Z")
    (tmp_path / "status-list.json").write_text(json.dumps(status))
    streams.EmbeddedLedger(tmp_path / "ledger.db").close()  # (the ledger must exist: the README says so)
    policy = load_policy(tmp_path / "policy.toml")
    assert (policy.mode, policy.deny) == ("any", {denied.did})
    assert policy.allow == {allowed.did: streams.Permission.READ_WRITE}
    [rule] = policy.credentials
    assert (rule.type, rule.issuers, rule.permission) == ("PaymentProviderCredential", {issuer.did},
                                                          streams.Permission.WRITE)
    assert rule.status_lists == (tmp_path / "status-list.json",)
    assert rule.status_ledger == f"sqlite:{tmp_path / 'ledger.db'}"  # (relative to the policy file)
    # Its comments give each rule's default permission: read-write for an allow rule, read for a credential rule.
    text = (tmp_path / "policy.toml").read_text()
    (tmp_path / "policy.toml").write_text(re.sub(r"^permission = .*$", "", text, flags=re.M))
    defaults = load_policy(tmp_path / "policy.toml")
    assert defaults.allow == {allowed.did: streams.Permission.READ_WRITE}
    assert [r.permission for r in defaults.credentials] == [streams.Permission.READ]


def test_readme_benchmark_command_names_every_module() -> None:
    """The one benchmark command's ``--only`` list is the suite's modules (``bench/run.py``'s MODULES)."""
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    [only] = re.findall(r"^python bench/run\.py .*\[--only ([a-z0-9 ]+)\]", README, re.M)
    assert only.split() == list(run.MODULES)


async def test_what_a_reconnect_fetches_is_not_a_gap_also_for_a_group_opened_meanwhile(tmp_path: Path) -> None:
    """README ("A `gap` says ..."): what a reconnect's catch-up fetches is not a gap.  It holds for the member's
    own branch (tests/test_api.py::test_a_catch_up_is_not_reported_as_a_gap_but_a_loss_on_a_live_connection_still
    _is), and for a group opened and published to while the member was offline too, whose first grant comes in
    the answer to the catch-up's grant sync (`tail --events` began with a `gap` line that filled at once)."""
    fast = streams.StoreOptions(durable=False, opslimit=1, memlimit=8192)
    hub = streams.MemoryHub()
    mon, a, b = (streams.Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
    author = await streams.Author.create(tmp_path / "mon.db", mon, "m", "pw", hub.author_endpoint(),
                                         streams.AllowList.of([a.did, b.did]), store_options=fast)
    sa = await streams.Subscriber.create(tmp_path / "a.db", a, mon.did, author.channel, "pw",
                                         hub.subscriber_endpoint("a"), store_options=fast)
    sb = await streams.Subscriber.create(tmp_path / "b.db", b, mon.did, author.channel, "pw",
                                         hub.subscriber_endpoint("b"), store_options=fast)
    try:
        await sa.subscribe(timeout=5)
        own = await sb.subscribe(timeout=5)
        await sb.close()
        group = await author.open_group([a.did, b.did])
        await author.publish(group, b"to the group")
        await author.publish(own, b"to b")
        sb = await streams.Subscriber.open(tmp_path / "b.db", "pw", hub.subscriber_endpoint("b again"),
                                           store_options=fast)
        got = sorted([(await sb.next_message(timeout=10)).payload for _ in range(2)])
        assert got == [b"to b", b"to the group"]  # (nothing is lost: this part holds)
        assert [e for e in sb.pending_events() if isinstance(e, streams.GapDetected)] == []
    finally:
        await sb.close()
        await sa.close()
        await author.close()


def test_an_address_mistake_gets_one_line_that_says_what_an_address_is(tmp_path: Path) -> None:
    """The quickstart's commands take ZeroMQ addresses.  A port in use, or an address typed as HOST:PORT, is one
    line on stderr (exit 2) naming the address once -- and, for the syntax, what an address looks like -- and
    leaves no store behind."""
    cli = Cli(tmp_path, {"PP": PASS})
    monitor = make_keystore(cli, "monitor.ks")
    provider = make_keystore(cli, "provider.ks")
    (tmp_path / "policy.toml").write_text(f'[policy]\n[[policy.allow]]\ndid = "{provider}"\n')
    serve = ("serve", "--store", "monitor.db", "--policy", "policy.toml", "--keystore", "monitor.ks", "--name", "m",
             "--passphrase-env", "PP", "--bind")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        r = cli(*serve, addr)
    [line] = r.stderr.splitlines()
    assert r.returncode == 2 and "Address already in use" in line and line.count(addr[len("tcp://"):]) == 1, line
    for args in (serve, ("subscribe", "--store", "provider.db", "--keystore", "provider.ks", "--author", monitor,
                         "--channel", "ab" * 32, "--passphrase-env", "PP", "--connect")):
        r = cli(*args, "127.0.0.1:5555")
        [line] = r.stderr.splitlines()
        assert r.returncode == 2 and line.count("127.0.0.1:5555") == 1, line
        assert "tcp://HOST:PORT" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitor.ks", "policy.toml", "provider.ks"]


def test_a_port_beyond_65535_is_refused_not_wrapped_around(tmp_path: Path) -> None:
    """libzmq takes a TCP port modulo 65536: `--bind tcp://127.0.0.1:99999` (a typo) served on port 34463 as if
    nothing were wrong, and `--connect` to it went there too.  Both are refused, naming the port."""
    cli = Cli(tmp_path, {"PP": PASS})
    monitor = make_keystore(cli, "monitor.ks")
    provider = make_keystore(cli, "provider.ks")
    (tmp_path / "policy.toml").write_text(f'[policy]\n[[policy.allow]]\ndid = "{provider}"\n')
    serve = ("serve", "--store", "monitor.db", "--policy", "policy.toml", "--keystore", "monitor.ks", "--name", "m",
             "--passphrase-env", "PP", "--bind")
    subscribe = ("subscribe", "--store", "provider.db", "--keystore", "provider.ks", "--author", monitor,
                 "--channel", "ab" * 32, "--timeout", "1", "--passphrase-env", "PP", "--connect")
    for args in (serve, subscribe):
        r = cli(*args, "tcp://127.0.0.1:99999")
        [line] = r.stderr.splitlines()
        assert r.returncode == 2 and "port 99999" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitor.ks", "policy.toml", "provider.ks"]


async def test_an_author_that_never_answers_is_reported_as_an_address_to_check(tmp_path: Path) -> None:
    """A member whose author's endpoint sent nothing at all: most often a wrong address or an author that is not
    running (here: nobody listens there), also a CurveZMQ mismatch.  `publish` and `tail` say to check the
    address, then name --curve."""
    fast = streams.StoreOptions(durable=False, opslimit=1, memlimit=8192)
    hub = streams.MemoryHub()
    mon, provider = streams.Identity.from_seed(b"\x01" * 32), streams.Identity.from_seed(b"\x02" * 32)
    author = await streams.Author.create(tmp_path / "monitor.db", mon, "m", PASS, hub.author_endpoint(),
                                         streams.AllowList.of([provider.did]), store_options=fast)
    sub = await streams.Subscriber.create(tmp_path / "provider.db", provider, mon.did, author.channel, PASS,
                                          hub.subscriber_endpoint("p"), store_options=fast)
    await sub.subscribe(timeout=5)
    await sub.close()
    await author.close()
    cli = Cli(tmp_path, {"PP": PASS})
    make_keystore(cli, "provider.ks")
    nobody = ("--store", "provider.db", "--passphrase-env", "PP", "--connect", f"ipc://{tmp_path}/nobody")
    hint = "check that the author runs at that address; if the author serves with --curve, give --curve too"
    pub = cli("publish", *nobody, "--data", "x", "--wait-ack", "1")
    assert pub.returncode == 1 and "NOT acknowledged" in pub.stdout and hint in pub.stdout, pub.stdout
    tail = cli("tail", *nobody, "--timeout", "1")
    assert tail.returncode == 0 and hint in tail.stderr, tail.stderr
    # A first run: the same, and not the library's "check the address and the channel id" before it (nothing came
    # at all: the channel id cannot be what is wrong, and the address is said once).
    (tmp_path / "provider.db").unlink()
    sub = cli("subscribe", *nobody, "--keystore", "provider.ks", "--author", mon.did, "--channel",
              author.channel.hex(), "--timeout", "1")
    assert sub.returncode == 2, sub.stderr
    assert sub.stderr.splitlines()[-1] == ("streams: error: no admission or refusal from the author; nothing at all "
                                           f"came from the author's endpoint: {hint}")


@pytest.mark.parametrize("make", [
    lambda dids: streams.AllowList.of(dids),
    lambda dids: streams.AllowList(dict.fromkeys(dids, streams.Permission.READ)),
    lambda dids: streams.DenyList(frozenset(dids)),
], ids=["AllowList.of", "AllowList", "DenyList"])
def test_a_list_policy_refuses_a_did_that_is_not_one(make: Any) -> None:
    """A policy file with a mistyped DID is refused (README: "invalid DIDs ... are refused with an error naming
    the file and the key"); the library's lists took it silently -- an allow-list then never admitted the
    provider meant, and a deny-list (one character off, or the DID of another method) denied nobody: alone, it
    admitted everyone it was written to keep out."""
    good = streams.Identity.from_seed(b"\x05" * 32).did
    # Typos that cannot be another valid DID: a character dropped, one outside base58 ("0"), a trailing space.
    for bad in (good[:-1], good[:20] + "0" + good[21:], good + " ", "did:web:example.com", ""):
        with pytest.raises(streams.LocalProtocolError, match="did:key"):
            make([good, bad])
    make([good])  # (a valid one is taken)


def test_the_benchmark_table_is_the_committed_results() -> None:
    """README's targets table quotes bench/results/e2e.json: re-committing results without the README (or the
    reverse) fails here, as stale numbers once went unnoticed.  Ratios of the throughput medians, and the latency
    targets' ratios, to two decimals."""
    import json

    e2e = json.loads((ROOT / "bench" / "results" / "e2e.json").read_text())
    rate = {(r["peer"], r["size"]): r["msgs_per_s"] for r in e2e["throughput"]}
    lat = {(t["target"].split()[0], t["size"]): t["ratio"] for t in e2e["targets"] if "latency" in t["target"]}
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in README.splitlines() if line.startswith("| ") and line.count("|") >= 6}
    sizes = (64, 1024, 16384)

    def ratios(num: str, den: str) -> list[str]:
        return [f"{rate[num, s] / rate[den, s]:.2f}x" for s in sizes]

    assert rows["signed-each >= 0.75x `min_each` (streaming API)"] == ratios("ours_each", "min_each")
    assert rows["amortized >= 0.5x `min_amortized` (streaming API)"] == ratios("ours_amortized", "min_amortized")
    assert rows["amortized, the library's default `durable=True`, vs `min_amortized`"] == ratios(
        "ours_amortized_fsync", "min_amortized")
    each_b, amort_b = ratios("ours_each", "min_each_bundled"), ratios("ours_amortized", "min_amortized_bundled")
    assert rows["for comparison: signed-each / amortized vs the bundled minimal pipelines"] == [
        f"{a} / {b}" for a, b in zip(each_b, amort_b, strict=True)]
    for label, each, amortized in [
            ("p50 latency <= bound, per-message API (`publish`, at half its own peak): signed-each / amortized",
             "ours_each_per_msg", "ours_amortized_per_msg"),
            ("p50 latency <= bound, streaming API (`publish_many`, at half its peak)", "ours_each", "ours_amortized")]:
        assert rows[label] == [f"{lat[each, s]:.2f} / {lat[amortized, s]:.2f}" for s in sizes], label
