"""Locks: who holds one is said, a dead holder's lock is taken over, a waiter waits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ssdstudy.locks import Holder, StaleLockWarning, exclusive

HOLD_AND_WAIT = """
import sys, time
from ssdstudy.locks import exclusive
with exclusive(sys.argv[1]) as holder:
    assert holder is None
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_held_lock_names_its_holder(tmp_path):
    lock = tmp_path / "run" / ".lock"
    with exclusive(lock) as mine:
        assert mine is None
        held = Holder.read(lock)
        assert held.pid == os.getpid() and held.host
        with exclusive(lock) as other:  # a second open file: refused, holder named
            assert other == held
    assert lock.read_text() == ""  # released: the file names nobody


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path):
    lock = tmp_path / ".lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AND_WAIT, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with exclusive(lock) as busy:
            assert busy is not None and busy.pid == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads(lock.read_text())["pid"] == proc.pid  # it died holding the lock
    with pytest.warns(StaleLockWarning, match=f"pid {proc.pid}"), exclusive(lock) as mine:
        assert mine is None
        assert Holder.read(lock).pid == os.getpid()


def test_a_waiter_is_told_whom_it_waits_for_and_goes_on_after(tmp_path):
    lock = tmp_path / "data.lock"
    told, order = [], []

    def second() -> None:
        with exclusive(lock, wait=True, on_wait=told.append) as holder:
            assert holder is None
            order.append("second")

    with exclusive(lock):
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.time() + 10
        while not told and time.time() < deadline:  # the second is waiting, and was told for whom
            time.sleep(0.01)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]
    assert [h.pid for h in told] == [os.getpid()]


def test_one_study_at_a_time_per_results_folder(tmp_path):
    from ssdstudy.study import Study

    study = Study("smoke", results=tmp_path, only=["hardware"], progress=False)
    order = []

    def second() -> None:
        with Study("smoke", results=tmp_path, only=["hardware"], progress=False).exclusive():
            order.append("second")

    with study.exclusive():
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first done")
        assert Holder.read(tmp_path / "smoke" / ".study.lock").pid == os.getpid()
    thread.join(5)
    assert order == ["first done", "second"]


def test_a_holder_delegates_its_lock_only_to_the_processes_it_names(monkeypatch):
    """A study holding a run's lock lets the torchrun processes it starts train the run:
    they accept a holder whose pid is in the environment, on this host, and no other."""
    import socket

    from ssdstudy.locks import DELEGATE_ENV, delegated

    holder = Holder(os.getpid(), socket.gethostname(), "now", "ssdstudy study run")
    monkeypatch.delenv(DELEGATE_ENV, raising=False)
    assert not delegated(holder)
    monkeypatch.setenv(DELEGATE_ENV, str(os.getpid()))
    assert delegated(holder) and not delegated(None)
    assert not delegated(Holder(os.getpid() + 1, socket.gethostname(), "now", "another"))
    assert not delegated(Holder(os.getpid(), "another-host", "now", "elsewhere"))
