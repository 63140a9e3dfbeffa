"""Listing the image files below a folder: the rules of :class:`~cvae_features.data.FolderSource`.

One ``os.scandir`` per folder, depth first in name order. What the walk does with links,
non-regular files, unreadable folders and special file systems is described in
:mod:`cvae_features.data.sources` (the folder rules); this module only carries them out.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from ..errors import DataError
from .preprocess import IMAGE_EXTENSIONS, not_regular_reason, os_error_reason

_OUTSIDE = "symlink leads outside the folder (not followed)"


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _key_name(name: str) -> str:
    """A file name as key text: a name that is not valid UTF-8 (undecodable bytes, kept by Python as
    surrogates) gets them as ``\\xNN`` escapes, so that every key can be stored and printed."""
    if name.isascii():
        return name
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _has_other_extension(name: str) -> bool:
    """True for a name with a non-image extension ("notes.txt"): neither a row nor, likely, a folder."""
    ext = os.path.splitext(name)[1]
    return bool(ext) and ext.lower() not in IMAGE_EXTENSIONS and ext[1:].isalnum() and not ext[1:].isdigit()


def _raise_if_bad_link(path: Path, what: str) -> None:
    """Raise a one-line DataError when ``path`` is a broken symlink or a symlink loop."""
    if not os.path.islink(path):
        return
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataError(f"{what} is a symlink loop (too many levels of symbolic links)") from None
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise DataError(f"{what} is a broken symlink: its target {os.readlink(path)!r} does not exist") from None
        raise DataError(f"{what} is a symlink that cannot be followed: {err.strerror}") from None


class _FolderWalk:
    """List the image rows below ``root`` by the module's rules (one ``os.scandir`` per folder).

    Attributes: ``keys`` (sorted), ``paths`` (where each row was found),
    ``refused`` {key: reason}, ``ignored`` and ``errors`` (lists of (key, reason)).
    """

    def __init__(self, root: str, *, follow_outside: bool, skip_unreadable: bool):
        self.root, self.follow_outside, self.skip_unreadable = root, follow_outside, skip_unreadable
        self.ignored, self.errors = [], []
        self._rows = {}  # real path (or key, for entries that cannot be resolved) -> (key, refusal or None, path)
        self._seen_dirs = {root}
        stack = [("", root)]  # (key prefix, real path of the folder)
        while stack:
            prefix, real = stack.pop()
            subdirs = self._scan(prefix, real)
            stack += reversed(subdirs)  # depth first, in name order
        rows = sorted(self._rows.values(), key=lambda row: row[0])
        self.keys, self.paths, self.refused = [], [], {}
        for key, reason, path in rows:
            if self.keys and key == self.keys[-1]:  # an escaped name equal to a real one: one row only
                self.ignored.append((key, "file name is not valid UTF-8 and its escaped key is taken"))
                continue
            self.keys.append(key)
            self.paths.append(path)
            if reason is not None:
                self.refused[key] = reason

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def _add(self, ident: str, key: str, reason, path: str) -> None:
        old = self._rows.get(ident)
        if old is None or key < old[0]:
            self._rows[ident] = (key, reason, path)

    def _scan(self, prefix: str, real_dir: str) -> list:
        """Record the rows of one folder; returns its sub-folders to walk as (key prefix, real path)."""
        subdirs = []
        try:
            with os.scandir(real_dir) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as err:
            self._walk_error(prefix, err)
            return []
        for entry in entries:
            key = prefix + _key_name(entry.name)
            try:
                if entry.is_symlink():
                    self._link(entry, key, real_dir, subdirs)
                elif entry.is_dir(follow_symlinks=False):
                    self._dir(key, entry.path, subdirs)  # entry.path is real: real_dir holds no link
                elif _is_image_name(entry.name):
                    reason = None if entry.is_file(follow_symlinks=False) else \
                        not_regular_reason(entry.stat(follow_symlinks=False).st_mode)
                    self._add(entry.path, key, reason, entry.path)
            except OSError as err:  # the entry vanished or cannot be examined
                if _is_image_name(entry.name):
                    self._add(key, key, os_error_reason(err), entry.path)
                else:
                    self.ignored.append((key, f"cannot be examined ({os_error_reason(err)})"))
        return subdirs

    def _dir(self, key: str, real: str, subdirs: list) -> None:
        special = _special_fs(real)
        if special:
            self.ignored.append((key + "/", f"special file system ({special}), not read"))
        elif real not in self._seen_dirs:  # a folder reached a second time (a link, a loop) is walked once
            self._seen_dirs.add(real)
            subdirs.append((key + "/", real))

    def _link(self, entry, key: str, real_dir: str, subdirs: list) -> None:
        is_image = _is_image_name(entry.name)
        try:
            mode = os.stat(entry.path).st_mode
        except OSError as err:
            reason = ("symlink loop (too many levels of symbolic links)" if err.errno == errno.ELOOP
                      else "broken symlink (its target does not exist)" if err.errno in (errno.ENOENT, errno.ENOTDIR)
                      else f"symlink cannot be followed ({os_error_reason(err)})")
            if is_image:
                self._add(key, key, reason, entry.path)
            elif not _has_other_extension(entry.name):  # it may have been a folder: say so
                self.ignored.append((key, reason))
            return
        real = os.path.realpath(os.path.join(real_dir, entry.name))
        if not stat.S_ISDIR(mode) and not is_image:
            return  # a link to a non-image file: not a row, like any other non-image file
        if not self._inside(real) and not self.follow_outside:
            if stat.S_ISDIR(mode):
                self.ignored.append((key + "/", _OUTSIDE))
            else:
                self._add(real, key, _OUTSIDE, entry.path)
            return
        if stat.S_ISDIR(mode):
            self._dir(key, real, subdirs)
            return
        special = _special_fs(real)
        self._add(real, key, f"on a special file system ({special}), not read" if special
                  else not_regular_reason(mode), entry.path)

    def _walk_error(self, prefix: str, err: OSError) -> None:
        where = prefix or "./"
        reason = err.strerror or str(err)
        if not self.skip_unreadable:
            what = (f"the folder {os.path.join(self.root, prefix.rstrip('/'))!r} of image folder {self.root!r}"
                    if prefix else f"image folder {self.root!r}")
            raise DataError(f"cannot read {what}: {reason} (errno {err.errno}); make it readable or move it "
                            "out") from None
        self.errors.append((where, reason))
        self.ignored.append((where, f"unreadable folder ({reason})"))


def _not_read_text(ignored) -> str:
    """One short phrase counting the ignored entries by kind, e.g. "1 link leading outside the folder"."""
    kinds = {}
    for _, reason in ignored:
        kind = (("link", "links", " leading outside the folder") if reason == _OUTSIDE
                else ("unreadable folder", "unreadable folders", "") if reason.startswith("unreadable folder")
                else ("folder", "folders", " on a special file system") if reason.startswith("special file system")
                else ("broken or looping link", "broken or looping links", "") if "symlink" in reason
                else ("entry", "entries", " that cannot be examined"))
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n:,} {one if n == 1 else many}{tail}" for (one, many, tail), n in kinds.items())


#: File system types never walked (kernel and device views: reading them can hang or never end).
_SPECIAL_FS_TYPES = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore",
    "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "binfmt_misc", "autofs", "efivarfs", "selinuxfs",
    "rpc_pipefs", "nsfs", "devfs"})
_SPECIAL_PREFIXES = ("/proc", "/sys")
_special_mounts_cache = None


def _special_mounts() -> list:
    """(mount point, type) of every file system mounted here, longest mount point first (the longest that
    holds a path is the one it lies on)."""
    global _special_mounts_cache
    if _special_mounts_cache is None:
        mounts = []
        try:
            with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
                        mounts.append((point, parts[2]))
        except OSError:  # not Linux: the fixed prefixes (and /dev) stand in
            mounts = [("/dev", "devfs")]
        mounts.sort(key=lambda m: len(m[0]), reverse=True)
        _special_mounts_cache = mounts
    return _special_mounts_cache


def _special_fs(real: str):
    """The type of special file system ``real`` (a resolved path) lies on, or None for an ordinary one."""
    for prefix in _SPECIAL_PREFIXES:
        if real == prefix or real.startswith(prefix + "/"):
            return prefix[1:]
    for point, kind in _special_mounts():
        if real == point or real.startswith(point.rstrip("/") + "/"):
            return kind if kind in _SPECIAL_FS_TYPES else None
    return None
