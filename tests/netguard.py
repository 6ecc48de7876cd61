"""Tests that must never reach the network: any attempt is refused and fails the test."""

from __future__ import annotations

import socket
import urllib.request

import requests


def refuse_network(monkeypatch):
    """Generator body for an autouse fixture: yields the list of attempts, asserts it stays empty."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access attempted during a test")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(requests.Session, "request", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"
