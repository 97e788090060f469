"""The command line's failures are one line on stderr with a fitting exit status, never a traceback, and its
output survives a locale that is not UTF-8."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from server.cli import main
from tests.support.helpers import ChromaLostAtBatch, write_notes


@pytest.fixture
def env(tiny_model_path: Path, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    return {**os.environ, "RIFT_MODEL": str(tiny_model_path), "HF_HUB_OFFLINE": "1"}


def test_output_is_utf8_in_a_legacy_locale_and_a_done_write_exits_0(tmp_path: Path, env: dict[str, str]) -> None:
    """With a cp1252 stdout (a Windows console redirected to a file), `rift add` of "文档.txt" stored it and then
    failed to print its report: exit 1, a traceback, and a script that thought nothing was stored."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "文档.txt").write_text("the bridge 🌉 at dawn", encoding="utf-8")
    legacy = {**env, "PYTHONIOENCODING": "cp1252"}
    data = str(tmp_path / "data")
    rift = [sys.executable, "-m", "server.cli"]
    added = subprocess.run([*rift, "add", str(docs), "--data-dir", data], env=legacy, capture_output=True, timeout=120)
    assert added.returncode == 0, added.stderr.decode(errors="replace")
    assert "文档.txt" in added.stdout.decode("utf-8")
    found = subprocess.run(
        [*rift, "search", "bridge", "--data-dir", data], env=legacy, capture_output=True, timeout=120
    )
    assert found.returncode == 0, found.stderr.decode(errors="replace")
    assert "🌉" in found.stdout.decode("utf-8")


def test_a_data_dir_that_cannot_be_reached_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """A folder above the data dir that cannot be searched (here: a file in a folder's place; a folder without
    x permission raises the same way) was a PermissionError traceback from `rift add`, `stats`, `search`."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for args in (["stats"], ["search", "x"], ["list"]):
        result = CliRunner().invoke(main, [*args, "--data-dir", str(blocker / "data")])
        assert result.exit_code == 1, result.output
        assert f"data_dir {blocker / 'data'} cannot be used as rift's data folder: Not a directory" in result.output
        assert "Traceback" not in result.output


def test_an_empty_data_dir_option_is_refused(env: dict[str, str]) -> None:
    """`--data-dir "$UNSET_VAR"` used the default store, so a script wrote into the user's own."""
    result = CliRunner().invoke(main, ["stats", "--data-dir", ""])
    assert result.exit_code == 2 and "--data-dir" in result.output and "is empty" in result.output


def test_a_k_below_one_is_a_bad_option(env: dict[str, str]) -> None:
    """Exit 2, as for other bad option values, before any store is opened (it exited 1 from the engine)."""
    result = CliRunner().invoke(main, ["search", "cat", "-k", "0", "--data-dir", "/nonexistent/rift"])
    assert result.exit_code == 2 and "'-k'" in result.output and "x>=1" in result.output, result.output
    # Above the setting max_k too (it exited 1, after the model had loaded: helper DC).
    many = CliRunner().invoke(main, ["search", "cat", "-k", "101", "--data-dir", "/nonexistent/rift"])
    assert many.exit_code == 2 and "'-k': 101 is more than the setting max_k (100)" in many.output, many.output


def test_ctrl_c_while_starting_says_so_and_exits_130(tmp_path: Path, env: dict[str, str], monkeypatch) -> None:
    """It read "Error: rift failed to start:" with no reason, exit 1."""
    import server.service as service

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    data = tmp_path / "data"
    assert CliRunner().invoke(main, ["add", str(tmp_path), "--data-dir", str(data)]).exit_code in (0, 1)
    monkeypatch.setattr(service, "_open_query_log", interrupted)
    result = CliRunner().invoke(main, ["stats", "--data-dir", str(data)])
    assert result.exit_code == 130 and "interrupted while starting" in result.output, result.output
    assert "failed to start" not in result.output
    lock = service.DataDirLock(service.Settings(data_dir=data))  # released
    lock.acquire()
    lock.release()


def test_a_chroma_server_lost_during_a_command_is_one_line(tmp_path: Path, env: dict[str, str], monkeypatch) -> None:
    """A Chroma server that stops answering after start-up reached the user as httpx's traceback."""
    import httpx

    import server.service as service

    data = tmp_path / "data"
    assert CliRunner().invoke(main, ["add", str(tmp_path), "--data-dir", str(data)]).exit_code in (0, 1)
    request = httpx.Request("POST", "http://chroma.internal:8000/api/v2/collections")

    def refused(*args, **kwargs):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    monkeypatch.setattr(service.Rift, "stats", refused)
    result = CliRunner().invoke(main, ["stats", "--data-dir", str(data)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith("Error: cannot reach the Chroma server at http://chroma.internal:8000 (")
    assert result.output.rstrip().endswith("run the command again once it answers")
    lock = service.DataDirLock(service.Settings(data_dir=data))  # the command closed its rift
    lock.acquire()
    lock.release()


def test_add_reports_a_file_name_that_is_not_utf8_in_valid_json(tmp_path: Path, env: dict[str, str]) -> None:
    """`rift add --json` wrote the name's raw byte, so the report was not valid UTF-8 (nor JSON to a reader)."""
    import json

    folder = tmp_path / "latin"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.md"), "wb") as handle:
        handle.write(b"# Cafe\n")
    data = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "add", str(folder), "--json", "--data-dir", data],
        env={**env, "LC_ALL": "C", "LANG": "C"},  # (surrogate escapes go out as raw bytes in the C locale)
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    [skipped] = json.loads(done.stdout.decode("utf-8"))["files"]
    assert skipped["path"].endswith("caf\ufffd.md") and skipped["status"] == "skipped"


def test_ctrl_c_during_rift_retrain_cancels_it_and_exits_130(tmp_path: Path, env: dict[str, str], monkeypatch) -> None:
    """It exited 1 (click's error), as a failure would, where every other command stopped by Ctrl-C exits 130."""
    import server.learning.cli as learning_cli
    from tests.support.helpers import make_settings, open_rift
    from tests.support.learning import fill_two_collections

    data = tmp_path / "data"
    rift = open_rift(make_settings(data, Path(env["RIFT_MODEL"])))
    fill_two_collections(rift)
    rift.close()

    def interrupted(learning, started):
        raise KeyboardInterrupt

    monkeypatch.setattr(learning_cli, "_wait", interrupted)
    result = CliRunner().invoke(main, ["retrain", "--min-triples", "1", "--data-dir", str(data)])
    assert result.exit_code == 130, result.output
    assert "interrupted; the job was cancelled and the serving model is unchanged" in result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output


def test_ctrl_c_during_rift_add_says_what_is_stored_and_a_rerun_finishes(
    tmp_path: Path, env: dict[str, str], monkeypatch
) -> None:
    """It printed click's "Aborted!" and exited 1, saying nothing of the files already stored."""
    import server.ingest.sync as sync

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        (docs / f"note{i}.md").write_text(f"# Note {i}\n\nThe harbour log entry number {i}.\n")
    data = str(tmp_path / "data")
    monkeypatch.setattr(sync, "BATCH_DOCS", 2)
    real_flush = sync._Sync.flush
    flushes: list[int] = []

    def interrupted_after_one_batch(self) -> None:
        if self.batch:
            flushes.append(len(self.batch))
            if len(flushes) == 2:
                raise KeyboardInterrupt
        real_flush(self)

    monkeypatch.setattr(sync._Sync, "flush", interrupted_after_one_batch)
    result = CliRunner().invoke(main, ["add", str(docs), "--collection", "notes", "--data-dir", data])
    assert result.exit_code == 130, result.output
    assert "interrupted: 2 file(s) stored" in result.output and "run the same command again" in result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
    monkeypatch.setattr(sync._Sync, "flush", real_flush)
    listed = CliRunner().invoke(main, ["list", "--collection", "notes", "--json", "--data-dir", data])
    assert listed.exit_code == 0 and json.loads(listed.output)["total"] == 2, listed.output
    again = CliRunner().invoke(main, ["add", str(docs), "--collection", "notes", "--data-dir", data])
    assert again.exit_code == 0 and "3 added, 2 unchanged" in again.output, again.output


def test_ctrl_c_during_a_delete_by_filters_says_what_it_deleted(tmp_path: Path, env: dict[str, str], monkeypatch) -> None:
    """It printed "Aborted!" (exit 1) over documents already gone; any other command said the same."""
    from server.service import Rift

    docs = write_notes(tmp_path / "docs", count=5)
    data = str(tmp_path / "data")
    assert CliRunner().invoke(main, ["add", str(docs), "--data-dir", data]).exit_code == 0
    real = Rift.delete_matching
    calls: list[int] = []

    def one_batch_at_a_time(self, collection, filters):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, collection, filters)

    monkeypatch.setattr(Rift, "delete_matching", one_batch_at_a_time)
    monkeypatch.setenv("RIFT_MAX_DOCUMENTS_PER_CALL", "2")
    where = json.dumps({"file_type": "markdown"})
    result = CliRunner().invoke(main, ["delete", "--filters", where, "--json", "--data-dir", data])
    assert result.exit_code == 130, result.output
    out = json.loads(result.stdout)
    assert out["interrupted"] is True and len(out["deleted"]) == 4
    assert "interrupted: 4 documents deleted (listed)" in result.stderr and "Aborted" not in result.output
    monkeypatch.setattr(Rift, "delete_matching", real)
    listed = CliRunner().invoke(main, ["list", "--json", "--data-dir", data])
    assert json.loads(listed.stdout)["total"] == 1

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Rift, "stats", interrupted)
    result = CliRunner().invoke(main, ["stats", "--data-dir", data])
    assert result.exit_code == 130 and "interrupted" in result.stderr and "Aborted" not in result.output


def test_sigterm_during_rift_add_takes_ctrl_cs_path(tmp_path: Path, env: dict[str, str], monkeypatch) -> None:
    """A stop by SIGTERM (systemd, docker) killed a command mid-write: no note of what was stored, no close, and
    once a Chroma HNSW file cut short that no command could open again (found by helper BL)."""
    import os
    import signal

    import server.ingest.sync as sync

    docs = write_notes(tmp_path / "docs")
    data = str(tmp_path / "data")
    monkeypatch.setattr(sync, "BATCH_DOCS", 2)
    real_flush = sync._Sync.flush
    flushes: list[int] = []

    def terminated_during_the_second_batch(self) -> None:
        if self.batch:
            flushes.append(len(self.batch))
            if len(flushes) == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # (Python takes it at its next step: before this batch)
        real_flush(self)

    monkeypatch.setattr(sync._Sync, "flush", terminated_during_the_second_batch)
    before = signal.getsignal(signal.SIGTERM)
    try:
        result = CliRunner().invoke(main, ["add", str(docs), "--collection", "notes", "--data-dir", data])
    finally:
        signal.signal(signal.SIGTERM, before)
    assert result.exit_code == 130, result.output
    assert "interrupted: 2 file(s) stored" in result.output and "Traceback" not in result.output, result.output
    monkeypatch.setattr(sync._Sync, "flush", real_flush)
    again = CliRunner().invoke(main, ["add", str(docs), "--collection", "notes", "--data-dir", data])
    assert again.exit_code == 0 and "3 added, 2 unchanged" in again.output, again.output


def test_a_chroma_server_lost_during_rift_add_lists_what_is_stored(
    tmp_path: Path, env: dict[str, str], monkeypatch
) -> None:
    """A Chroma server that went down after some batches committed was re-raised before the report: the user
    saw only the error (as the top-level line) and not the files already stored, as a RiftError there shows."""
    docs = write_notes(tmp_path / "docs")
    data = str(tmp_path / "data")
    lost = ChromaLostAtBatch(monkeypatch)
    result = CliRunner().invoke(main, ["add", str(docs), "--collection", "notes", "--data-dir", data])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.stdout.count("added ") == 2, result.output  # the first batch's files, listed
    assert "notes: 2 added" in result.stderr, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: cannot reach the Chroma server at http://chroma.internal:8000 ("), error
    assert "run the same command again once it answers; before the failure, 2 file(s) stored" in error, error
    lost.restore()
    again = CliRunner().invoke(main, ["add", str(docs), "--collection", "notes", "--data-dir", data])
    assert again.exit_code == 0 and "3 added, 2 unchanged" in again.output, again.output


def test_ctrl_c_during_a_watch_sync_says_so_and_exits_130(tmp_path: Path, env: dict[str, str], monkeypatch) -> None:
    """Between syncs watchfiles takes Ctrl-C (the watch ends, and its WARNING about it is not shown); during a
    sync it reached click as "Aborted!", exit 1. Both exit 130 (between syncs it was 0, helper DC)."""
    import logging

    import server.ingest.sync as sync

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nwatched\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    flush = sync._Sync.flush
    monkeypatch.setattr(sync._Sync, "flush", interrupted)
    result = CliRunner().invoke(main, ["watch", str(docs), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 130, result.output
    assert "stopped in the middle of a sync" in result.output and "Aborted" not in result.output
    notice = logging.LogRecord("watchfiles.main", logging.WARNING, "", 0, "KeyboardInterrupt caught, stopping watch", (), None)
    assert not logging.getLogger("watchfiles.main").filter(notice)
    import server.ingest.watch as watch

    monkeypatch.setattr(sync._Sync, "flush", flush)
    monkeypatch.setattr(watch, "watch_folder", lambda *args, **kwargs: None)  # (as watchfiles ends on Ctrl-C)
    between = CliRunner().invoke(main, ["watch", str(docs), "--data-dir", str(tmp_path / "data")])
    assert between.exit_code == 130 and "Traceback" not in between.output, between.output


def test_a_command_error_quoting_disk_words_is_not_taken_for_a_full_disk(tmp_path: Path, env: dict[str, str]) -> None:
    """A path named like the OS's message for a full disk turned "does not exist" into "the disk is full"."""
    missing = tmp_path / "No space left on device.md"
    result = CliRunner().invoke(main, ["add", str(missing), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1 and "does not exist" in result.output and "disk holding" not in result.output


def test_a_lock_file_that_cannot_be_made_is_one_line_and_export_still_reads(
    tmp_path: Path, env: dict[str, str], monkeypatch
) -> None:
    """A read-only copy of a data dir (EROFS) or a folder where rift.lock should be ended every command but
    `rift export` with an OSError traceback; sharing a Chroma server, export's start-up probe failed the same way
    where the README promises it reads such a copy."""
    import errno

    from filelock import FileLock

    data = tmp_path / "data"
    (tmp_path / "n.md").write_text("# T\n\nthe cat sat on the mat\n")
    assert CliRunner().invoke(main, ["add", str(tmp_path / "n.md"), "--data-dir", str(data)]).exit_code == 0
    (data / "rift.lock").unlink()
    (data / "rift.lock").mkdir()
    for args in (["stats"], ["list"], ["search", "cat"], ["serve"]):
        result = CliRunner().invoke(main, [*args, "--data-dir", str(data)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "its lock file rift.lock cannot be written (Is a directory)" in result.output, result.output
    (data / "rift.lock").rmdir()

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(data / "rift.lock"))

    monkeypatch.setattr(FileLock, "acquire", read_only)
    for args in (["list"], ["serve"]):
        result = CliRunner().invoke(main, [*args, "--data-dir", str(data)])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "(Read-only file system)" in result.output and "`rift export` can still read" in result.output
    monkeypatch.setenv("RIFT_VECTOR_BACKEND", "http")
    exported = CliRunner().invoke(main, ["export", "--data-dir", str(data)])
    assert exported.exit_code == 0, exported.output
    assert "exporting what this data dir holds, without catching up first" in exported.output
    assert "the cat sat on the mat" in exported.output


def test_an_argument_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """`rift get $'x\\xe9'` and `rift list --collection $'x\\xe9'` (the shell's bytes reach Python as a lone
    surrogate) ended in a UnicodeEncodeError traceback from SQLite, where `rift delete` says what is wrong."""
    data = str(tmp_path / "data")
    (tmp_path / "n.md").write_text("# T\n\nthe cat sat on the mat\n")
    assert CliRunner().invoke(main, ["add", str(tmp_path / "n.md"), "--data-dir", data]).exit_code == 0
    got = CliRunner().invoke(main, ["get", "x\udce9", "--data-dir", data])
    assert got.exit_code == 1 and "doc_id is not valid Unicode" in got.output, got.output
    listed = CliRunner().invoke(main, ["list", "--collection", "x\udce9", "--data-dir", data])
    assert listed.exit_code == 2 and "collection must be 1-63 characters" in listed.output, listed.output
    for result in (got, listed):
        assert "Traceback" not in result.output and "UnicodeEncodeError" not in repr(result.exception)


def test_a_data_dir_that_is_not_utf8_is_refused_before_anything_is_made(tmp_path: Path, env: dict[str, str]) -> None:
    """`--data-dir $'/tmp/d\\xe9'` made state.sqlite, the query log, models/ and the lock, then failed in Chroma
    with "'utf-8' codec can't encode character '\\udce9'", leaving a half-made store."""
    (tmp_path / "n.md").write_text("# T\n\nthe cat sat on the mat\n")
    data = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"d\xe9"))
    result = CliRunner().invoke(main, ["add", str(tmp_path / "n.md"), "--data-dir", data])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"data_dir: {tmp_path}/d\\xe9 is not valid UTF-8 (Chroma needs a text path)" in result.output
    assert not os.path.exists(data)
    # The whole path is checked once made absolute: a relative one in such a folder, or a link into one.
    os.symlink(data, tmp_path / "link", target_is_directory=True)
    linked = CliRunner().invoke(main, ["add", str(tmp_path / "n.md"), "--data-dir", str(tmp_path / "link" / "store")])
    assert linked.exit_code == 1 and "is not valid UTF-8" in linked.output, linked.output
    os.mkdir(data)
    with contextlib.chdir(data):
        relative = CliRunner().invoke(main, ["add", str(tmp_path / "n.md"), "--data-dir", "store"])
    assert relative.exit_code == 1 and "d\\xe9/store is not valid UTF-8" in relative.output, relative.output
    assert os.listdir(data) == []


def test_a_collection_name_with_a_trailing_newline_is_refused_before_anything_is_made(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """A name pasted with its newline (`$(...)` keeps none, a script's echo may) passed the name check, whose `$`
    matches before a final newline, and failed in Chroma with a traceback after a data dir was made."""
    (tmp_path / "n.md").write_text("# T\n\nthe cat sat on the mat\n")
    data = tmp_path / "data"
    for args in (
        ["collections", "create", "notes\n"],
        ["collections", "create", "no spaces"],
        ["add", str(tmp_path / "n.md"), "--collection", "notes\n"],
        ["search", "cat", "--collection", "bad name!"],
        ["watch", str(tmp_path), "--collection", "bad name!"],
        ["list", "--collection", "bad name!"],
    ):
        result = CliRunner().invoke(main, [*args, "--data-dir", str(data)])
        # (a bad option value, as click's own: exit 2, before any model loads)
        assert result.exit_code == 2 and "collection must be 1-63 characters" in result.output, result.output
        assert "Invalid value for '--collection'" in result.output or "collections" in args[0], result.output
        assert "Traceback" not in result.output and "Chroma" not in result.output
        assert not data.exists(), args


@contextlib.contextmanager
def web_server(status: int, body: bytes, headers: dict[str, str] | None = None):
    """A local HTTP server that is not Chroma: every GET answers `status` with `body`; yields its port."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(status)
            for name, value in (headers or {"Content-Type": "text/html"}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


PAGE = b"<!DOCTYPE HTML>\n<html><head><title>Error response</title></head>\n<body><h1>Error 404</h1>\n" * 20


def test_a_port_that_answers_but_is_not_chroma_is_named_not_waited_for(
    tmp_path: Path, env: dict[str, str], tiny_model_path: Path
) -> None:
    """A wrong port where a web server answers read as "cannot reach the Chroma server ...: <!DOCTYPE HTML> ..."
    (the heartbeat's status was never read), and `rift serve` retried it forever."""
    import time

    from server.engine.vector_store import ChromaUnreachable, make_client
    from server.errors import RiftError
    from server.service import Rift
    from tests.support.helpers import make_settings

    (tmp_path / "n.md").write_text("# T\n\nthe cat sat on the mat\n")
    with web_server(404, PAGE) as port:
        result = CliRunner().invoke(
            main,
            ["add", str(tmp_path / "n.md"), "--data-dir", str(tmp_path / "data")],
            env={"RIFT_VECTOR_BACKEND": "http", "RIFT_CHROMA_PORT": str(port)},
        )
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.output.strip().splitlines() == [
            f"Error: rift failed to start: something answers at 127.0.0.1:{port} but it is not a Chroma server (its "
            "/api/v2/heartbeat "
            "answered 404 Not Found): check chroma_host / chroma_port (a Chroma server older than 0.6 has no "
            "/api/v2 either)"
        ], result.output
        settings = make_settings(tmp_path / "served", tiny_model_path, vector_backend="http", chroma_port=port)
        app = Rift(settings).start(background=True)  # `rift serve`: fails start-up, does not wait
        try:
            started = time.monotonic()
            with pytest.raises(RiftError, match="rift failed to start: something answers at"):
                app.engine(timeout=60)
            assert time.monotonic() - started < 30 and app._waiting is None
        finally:
            app.close()

    def problem(status: int, body: bytes, **headers: str) -> BaseException:
        with web_server(status, body, headers or None) as port:
            settings = make_settings(tmp_path / "data", tiny_model_path, vector_backend="http", chroma_port=port)
            with pytest.raises(RiftError) as caught:
                make_client(settings)
        assert "<" not in str(caught.value) and "\n" not in str(caught.value), caught.value
        return caught.value

    page = problem(200, PAGE)  # a web page at the right path: not Chroma either, and not waited for
    assert not isinstance(page, ChromaUnreachable)
    assert "answered 200 OK with a web page titled 'Error response', not Chroma's heartbeat" in str(page), page
    moved = problem(301, b"", Location="https://127.0.0.1/api/v2/heartbeat")
    assert "301 Moved Permanently (a redirect to https://127.0.0.1/api/v2/heartbeat: check chroma_ssl)" in str(moved)
    refused = problem(401, b'{"error": "unauthorized"}', **{"Content-Type": "application/json"})
    assert "check chroma_auth_token" in str(refused) and not isinstance(refused, ChromaUnreachable)
    starting = problem(503, PAGE)  # a proxy whose Chroma is not up yet: waited for, as an unreachable one
    assert isinstance(starting, ChromaUnreachable) and "503 Service Unavailable" in str(starting), starting


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retrain", "--epochs", "-1"], "--epochs"),
        (["retrain", "--lr", "0"], "--lr"),
        (["retrain", "--batch-size", "0"], "--batch-size"),
        (["retrain", "--min-triples", "0"], "--min-triples"),
        (["search", "cat", "--filters", "[1]"], "a JSON object"),
        (["serve", "--transport", "streamable-http", "--port", "99999"], "--port"),
    ],
)
def test_a_bad_option_value_is_a_usage_error_before_any_work(
    tmp_path: Path, env: dict[str, str], args: list[str], message: str
) -> None:
    """They exited 1 after the model had loaded (retrain's bounds, search's filters), or not at all."""
    data = tmp_path / "data"
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data)])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not data.exists()


def test_a_reading_command_on_an_empty_folder_writes_no_store_there(tmp_path: Path, env: dict[str, str]) -> None:
    """`mkdir d; rift list --data-dir d` (a typo'd folder, a mount point not mounted) made a whole store there."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["list"], ["stats"], ["models"], ["export"]):
        result = CliRunner().invoke(main, [*command, "--data-dir", str(empty)])
        assert result.exit_code == 1 and "no rift data folder at" in result.output, (command, result.output)
    assert list(empty.iterdir()) == []


def test_rift_add_of_a_named_file_it_skips_exits_1(tmp_path: Path, env: dict[str, str]) -> None:
    """`rift add notes.md data.bin && ...` went on as if both were stored: a file named on the command line
    that is skipped is a failure (after the rest is stored); a folder's skipped files are not."""
    folder = write_notes(tmp_path / "docs", count=2)
    (folder / "data.bin").write_bytes(b"\x00\x01\x02binary\x00" * 100)
    data = str(tmp_path / "data")
    named = CliRunner().invoke(main, ["add", str(folder / "note0.md"), str(folder / "data.bin"), "--data-dir", data])
    assert named.exit_code == 1, named.output
    assert f"not stored, though named: {folder / 'data.bin'}: " in named.output and "Traceback" not in named.output
    assert f"added     {folder / 'note0.md'}" in named.output
    whole = CliRunner().invoke(main, ["add", str(folder), "--data-dir", data])
    assert whole.exit_code == 0 and "data.bin" in whole.output, whole.output
