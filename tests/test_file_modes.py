"""A store or keystore file readable by group or others is opened, with a warning that says so (THREATS 9):
its secrets are sealed, but only as strongly as the passphrase resists an offline guess by whoever copies it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from streams.identity import Identity
from streams.keystore import MIN_MEMLIMIT, MIN_OPSLIMIT, load_identity, read_public, save_identity
from streams.store import Store

from .cliutil import Cli

FAST: dict[str, int] = {"opslimit": MIN_OPSLIMIT, "memlimit": MIN_MEMLIMIT}
PASS = "modes-test-passphrase-7f3a"
IDENT = Identity.from_seed(bytes(range(32)))


def _warnings(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    path = tmp_path / "id.ks"
    save_identity(path, IDENT, PASS, **FAST)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.db"
    Store.create(path, IDENT, PASS, role="author", channel=b"c" * 32, author_did=IDENT.did, **FAST).close()
    return path


def test_a_keystore_open_to_others_is_loaded_with_a_warning(keystore: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert os.stat(keystore).st_mode & 0o777 == 0o600  # as written
    with caplog.at_level(logging.WARNING):
        assert load_identity(keystore, PASS).did == IDENT.did
        assert read_public(keystore) == IDENT.did
    assert _warnings(caplog, "streams.keystore") == []
    for mode in (0o644, 0o640, 0o602):
        os.chmod(keystore, mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert load_identity(keystore, PASS).did == IDENT.did  # not refused
        [warning] = _warnings(caplog, "streams.keystore")
        assert str(keystore) in warning and f"{mode:04o}" in warning
        assert PASS not in caplog.text


def test_a_store_open_to_others_is_opened_with_a_warning(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert os.stat(store).st_mode & 0o777 == 0o600  # as created
    with caplog.at_level(logging.WARNING):
        Store.open(store, PASS).close()
    assert _warnings(caplog, "streams.store") == []
    os.chmod(store, 0o644)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        opened = Store.open(store, PASS)  # not refused
    try:
        assert opened.identity.did == IDENT.did
    finally:
        opened.close()
    [warning] = _warnings(caplog, "streams.store")
    assert str(store) in warning and "0644" in warning
    assert PASS not in caplog.text


def test_the_cli_shows_the_warning_on_stderr(tmp_path: Path, keystore: Path, store: Path) -> None:
    cli = Cli(tmp_path, env={"MODES_PW": PASS})
    os.chmod(keystore, 0o644)
    os.chmod(store, 0o604)
    shown = cli("identity", "show", "--keystore", str(keystore)).ok()
    assert f"keystore {keystore} is open to group or others (mode 0644)" in shown.stderr
    status = cli("status", "--store", str(store), "--passphrase-env", "MODES_PW").ok()
    assert f"store {store} is open to group or others (mode 0604)" in status.stderr
    assert PASS not in cli.all_output()
