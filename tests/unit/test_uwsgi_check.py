"""The uWSGI ``enable-threads`` check with a stand-in ``uwsgi`` module (what uWSGI puts in
``uwsgi.opt``); the real uWSGI runs in tests/integration/test_uwsgi.py."""

from __future__ import annotations

import logging
import types

import pytest

from vwo_otel._engine import uwsgi as check_module


@pytest.mark.parametrize("options, disabled", [
    ({}, True),
    ({"enable-threads": True}, False),  # --enable-threads
    ({"enable-threads": b"true"}, False),  # enable-threads = true (ini)
    ({"enable-threads": b"1"}, False),
    ({"enable-threads": b"false"}, True),
    ({"enable-threads": b"0"}, True),
    ({"threads": b"4"}, False),  # threads = 4 enables them too
    ({"threads": b"0"}, True),
    ({"processes": b"2", "master": True}, True),
])
def test_threads_disabled_reads_uwsgis_options(options, disabled):
    assert check_module.threads_disabled(options) is disabled


def test_check_outside_uwsgi_is_silent(caplog):
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        assert check_module.check() is False
    assert caplog.records == []


def test_check_under_a_stand_in_uwsgi_warns_once(monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "uwsgi", types.SimpleNamespace(opt={"master": True}))
    with caplog.at_level(logging.WARNING, logger="vwo_otel"):
        assert check_module.check() is True
        assert check_module.check() is True
    (record,) = caplog.records
    assert "enable-threads" in record.getMessage()
    monkeypatch.setitem(__import__("sys").modules, "uwsgi", types.SimpleNamespace(opt={"enable-threads": True}))
    assert check_module.check() is False
