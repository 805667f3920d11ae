"""Watches a folder for files appearing and disappearing, with Linux inotify (ctypes).

Used for the device plugin folder: a new ``kubelet.sock`` means the kubelet restarted; our
socket vanishing means it was cleaned away. Where inotify is not available the watcher
compares folder listings on each wait instead, with the same interface.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import pathlib
import select
import struct

log = logging.getLogger("gpupack.fswatch")

IN_CLOSE_WRITE = 0x8
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_DELETE_SELF = 0x400
_HEADER = struct.Struct("iIII")


class DirWatcher:
    """``wait(timeout)`` returns [("created"|"deleted"|"modified", name)] seen since the last call
    (the listing fallback reports a rewritten file as deleted and created)."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self._fd = -1
        self._listing = self._list()
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            mask = IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF
            if libc.inotify_add_watch(fd, str(folder).encode(), mask) < 0:
                os.close(fd)
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self._fd = fd
        except (OSError, AttributeError) as err:
            log.warning("inotify unavailable (%s); comparing folder listings instead", err)

    def _list(self) -> dict[str, int]:
        try:
            return {e.name: e.inode() for e in os.scandir(self.folder)}
        except OSError:
            return {}

    def wait(self, timeout_s: float) -> list[tuple[str, str]]:
        if self._fd < 0:
            return self._diff(timeout_s)
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if not ready:
            return []
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            _wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            raw = data[offset + _HEADER.size : offset + _HEADER.size + length]
            offset += _HEADER.size + length
            name = raw.split(b"\0", 1)[0].decode(errors="replace")
            if mask & (IN_CREATE | IN_MOVED_TO):
                events.append(("created", name))
            elif mask & (IN_DELETE | IN_MOVED_FROM):
                events.append(("deleted", name))
            elif mask & IN_CLOSE_WRITE:
                events.append(("modified", name))
            elif mask & IN_DELETE_SELF:
                events.append(("deleted", "."))
        return events

    def _diff(self, timeout_s: float) -> list[tuple[str, str]]:
        import threading

        threading.Event().wait(min(timeout_s, 0.5))
        now = self._list()
        events = [("deleted", n) for n in self._listing if n not in now or now[n] != self._listing[n]]
        events += [("created", n) for n in now if n not in self._listing or now[n] != self._listing[n]]
        self._listing = now
        return events

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
