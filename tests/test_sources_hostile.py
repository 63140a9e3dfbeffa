"""Hostile-but-fair folder and manifest inputs: every one is a recorded skip or a one-line error, never silence,
never a hang. Each test builds its hostile input in tmp_path with real files (no mocks)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.extract import _one_line
from cli.main import cli
from cvae_features.data import Preprocess, decode_image, infer_preprocess, iter_batches, load_images, open_source
from cvae_features.data.sources import FolderSource
from cvae_features.errors import DataError, DecodeError

GRAY8 = Preprocess(8, 1)
PIPE = "not a regular file (named pipe)"
LOOP = "symlink loop (too many levels of symbolic links)"
OUTSIDE = "symlink leads outside the folder (not followed)"


def _png(path, value=100, size=6):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path, format="PNG")
    return path


def _one_clean_line(text: str) -> str:
    text = text.strip()
    assert "\n" not in text and "Traceback" not in text, text
    return text


# --- 1. unreadable folders -------------------------------------------------------------------------------

# Run in a child process: as root it first drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its effective
# capabilities (capset(2)), so that chmod 000 really denies reading, exactly as for an ordinary user.
_UNREADABLE_CHILD = textwrap.dedent('''
    import ctypes, json, os, sys
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]
        header, data = Header(0x20080522, 0), (Data * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            print(json.dumps({"no_caps": "capget failed"})); sys.exit(0)
        data[0].effective &= ~((1 << 1) | (1 << 2))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.capset(ctypes.byref(header), data) != 0:
            print(json.dumps({"no_caps": f"capset failed, errno {ctypes.get_errno()}"})); sys.exit(0)
    try:
        os.listdir(sys.argv[1] + "/dogs")
        print(json.dumps({"no_caps": "chmod 000 does not deny reading here"})); sys.exit(0)
    except PermissionError:
        pass
    from click.testing import CliRunner
    from cli.main import cli
    from cvae_features.data import open_source
    from cvae_features.errors import DataError
    out = {}
    try:
        open_source(sys.argv[1])
    except DataError as err:
        out["error"] = str(err)
    src = open_source(sys.argv[1], skip_unreadable=True)
    out["skip"] = {"keys": src.keys, "labels": src.labels.tolist(), "walk_errors": src.walk_errors,
                   "ignored": src.ignored, "description": src.description}
    try:
        open_source(sys.argv[1] + "/dogs")
    except DataError as err:
        out["root_error"] = str(err)
    result = CliRunner().invoke(cli, ["extract", sys.argv[1], "-o", sys.argv[2], "--features", "raw",
                                      "--workers", "0", "--no-progress"])
    out["cli"] = [result.exit_code, result.output]
    print(json.dumps(out))
''')


def test_unreadable_class_folder_is_a_one_line_error_or_a_listed_walk_error(tmp_path):
    folder = tmp_path / "pets"
    for key in ("cats/a.png", "cats/b.png", "dogs/c.png", "dogs/d.png"):
        _png(folder / key)
    (folder / "dogs").chmod(0)
    try:
        child = subprocess.run([sys.executable, "-c", _UNREADABLE_CHILD, str(folder), str(tmp_path / "s.h5")],
                               capture_output=True, text=True, timeout=300,
                               cwd=Path(__file__).resolve().parents[1])
    finally:
        (folder / "dogs").chmod(0o755)
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout.strip().splitlines()[-1])
    if "no_caps" in out:
        pytest.skip(f"cannot make a folder unreadable for this process: {out['no_caps']}")
    dogs = str(folder / "dogs")
    assert out["error"] == (f"cannot read the folder {dogs!r} of image folder {str(folder)!r}: "
                            "Permission denied (errno 13); make it readable or move it out")
    assert out["root_error"] == f"cannot read image folder {dogs!r}: Permission denied (errno 13); " \
                                "make it readable or move it out"
    skip = out["skip"]
    assert skip["keys"] == ["cats/a.png", "cats/b.png"] and skip["labels"] == [0, 0]
    assert skip["walk_errors"] == [["dogs/", "Permission denied"]]
    assert skip["ignored"] == [["dogs/", "unreadable folder (Permission denied)"]]
    assert skip["description"].endswith("(2 images, 1 class; not read: 1 unreadable folder)")
    code, text = out["cli"]
    assert code == 1 and _one_clean_line(text) == f"Error: {out['error']}"


# --- 2. named pipes -------------------------------------------------------------------------------------

@pytest.mark.timeout(20)
@pytest.mark.parametrize("workers", [0, 2])
def test_named_pipe_called_png_is_a_recorded_skip_and_never_opened(tmp_path, workers):
    folder = tmp_path / "flat"
    _png(folder / "a.png", 10)
    _png(folder / "b.png", 200)
    os.mkfifo(folder / "x.png")  # open() on it would block until a writer comes: none ever will
    src = open_source(folder)
    assert src.keys == ["a.png", "b.png", "x.png"] and src.refused == {"x.png": PIPE}
    with pytest.raises(DecodeError, match=r"^not a regular file \(named pipe\)$"):
        src.load(2, GRAY8)
    with pytest.raises(DecodeError, match=r"^not a regular file \(named pipe\)$"):
        decode_image(folder / "x.png", GRAY8)  # the decoder refuses it by itself too (e.g. a manifest row)
    batches = list(iter_batches(src, GRAY8, batch_size=8, workers=workers))
    assert [b.indices.tolist() for b in batches] == [[0, 1]]
    assert batches[0].skipped == [(2, PIPE)]
    assert batches[0].images[:, 0, 0, 0].tolist() == [10, 200]
    assert infer_preprocess(src).size == 8  # the size sample does not open the pipe either


@pytest.mark.timeout(20)
def test_named_pipe_in_a_manifest_or_as_the_manifest(tmp_path):
    _png(tmp_path / "a.png")
    os.mkfifo(tmp_path / "p.png")
    (tmp_path / "m.csv").write_text("a.png,cat\np.png,dog\n")
    src = open_source(tmp_path / "m.csv")
    images, idx, skipped = load_images(src, GRAY8, workers=0)
    assert idx.tolist() == [0] and skipped == [(1, PIPE)]
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(DataError) as info:
        open_source(tmp_path / "pipe.csv")
    assert str(info.value) == f"manifest {str(tmp_path / 'pipe.csv')!r} cannot be read: {PIPE}"


# --- 3. symlink loops -------------------------------------------------------------------------------------

def test_symlink_loops_are_a_skip_or_listed_never_a_traceback(tmp_path):
    folder = tmp_path / "loops"
    _png(folder / "good.png")
    os.symlink("loop.png", folder / "loop.png")  # a file link to itself
    os.symlink("selfdir", folder / "selfdir")  # a link to itself without an image name (a folder, maybe)
    os.symlink("notes.txt", folder / "notes.txt")  # a looping non-image file: neither row nor listed
    os.symlink(".", folder / "here")  # a folder link to the root: walked once
    src = open_source(folder)
    assert src.keys == ["good.png", "loop.png"] and src.refused == {"loop.png": LOOP}
    assert src.ignored == [("selfdir", LOOP)]
    assert src.description.endswith("(2 images, no labels; not read: 1 broken or looping link)")
    images, idx, skipped = load_images(src, GRAY8, workers=0)
    assert idx.tolist() == [0] and skipped == [(1, LOOP)]
    with pytest.raises(DecodeError, match=r"^symlink loop \(too many levels of symbolic links\)$"):
        decode_image(folder / "loop.png", GRAY8)
    with pytest.raises(DataError) as info:
        open_source(folder / "selfdir")
    assert str(info.value) == f"source {str(folder / 'selfdir')!r} is a symlink loop (too many levels of " \
                              "symbolic links)"
    result = CliRunner().invoke(cli, ["extract", str(folder / "loop.png"), "-o", str(tmp_path / "s.h5")])
    assert result.exit_code == 1 and "is a symlink loop" in _one_clean_line(result.output)


# --- 4. symlinks leaving the folder ---------------------------------------------------------------------------

def test_links_inside_are_followed_once_and_links_outside_are_not(tmp_path):
    folder = tmp_path / "data"
    _png(folder / "cats" / "a.png", 10)
    _png(folder / "cats" / "b.png", 20)
    _png(tmp_path / "elsewhere" / "o.png", 30)
    _png(tmp_path / "elsewhere" / "deep" / "p.png", 40)
    os.symlink("a.png", folder / "cats" / "0_alias.png")  # the same file twice: one row, the first key
    os.symlink("cats", folder / "kittens")  # the same folder twice: walked once, not a second class
    os.symlink("..", folder / "cats" / "up")  # the root again
    os.symlink(tmp_path / "elsewhere" / "o.png", folder / "cats" / "out.png")
    os.symlink(tmp_path / "elsewhere", folder / "more")
    os.symlink("/", folder / "everything")  # once pulled every image of the machine, /proc included
    src = open_source(folder)
    assert src.keys == ["cats/0_alias.png", "cats/b.png", "cats/out.png"]
    assert src.label_names == ["cats"] and src.labels.tolist() == [0, 0, 0]
    assert src.refused == {"cats/out.png": OUTSIDE}
    assert src.ignored == [("everything/", OUTSIDE), ("more/", OUTSIDE)]
    assert src.description.endswith("(3 images, 1 class; not read: 2 links leading outside the folder)")
    images, idx, skipped = load_images(src, GRAY8, workers=0)
    assert images[:, 0, 0, 0].tolist() == [10, 20] and skipped == [(2, OUTSIDE)]

    os.unlink(folder / "everything")
    os.symlink("/proc", folder / "proc")
    os.symlink("/sys/kernel", folder / "kernel")
    followed = FolderSource(folder, follow_outside=True)
    # elsewhere/o.png is reached as cats/out.png and more/o.png: one row, under the first key.
    assert followed.keys == ["cats/0_alias.png", "cats/b.png", "cats/out.png", "more/deep/p.png"]
    assert followed.label_names == ["cats", "more"] and followed.refused == {}
    assert followed.ignored == [("kernel/", "special file system (sys), not read"),
                                ("proc/", "special file system (proc), not read")]
    assert open_source(folder, follow_outside=True).keys == followed.keys  # keyword-only, passed through
    with pytest.raises(DataError, match=r"^image folder '/proc' is on a special file system \(proc\)"):
        FolderSource("/proc")


# --- 5. a stray image at the root of a class layout: see tests/test_data.py ---------------------------------

def test_root_images_beside_classes_are_unlabelled_rows(tmp_path):
    folder = tmp_path / "classes"
    for key in ("a/1.png", "a/2.png", "b/3.png", "c/sub/4.png", "stray.png", "z.png"):
        _png(folder / key)
    src = open_source(folder)
    assert dict(zip(src.keys, src.labels.tolist())) == {"a/1.png": 0, "a/2.png": 0, "b/3.png": 1,
                                                        "c/sub/4.png": 2, "stray.png": -1, "z.png": -1}
    assert src.label_names == ["a", "b", "c"] and src.has_labels
    assert src.description.endswith("(6 images, 3 classes, 2 unlabelled images at the root)")


# --- 6. manifest headers and unknown labels ------------------------------------------------------------------

@pytest.mark.parametrize("header", ["filename,class", "file,target", "Image,Category", "path,label", "picture,kind",
                                    "key"])
def test_manifest_headers_are_recognised_and_minus_one_is_unknown(tmp_path, header):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _png(tmp_path / name)
    cells = "" if "," not in header else ",cat"
    rows = ["a.png,cat", "b.png,-1", "c.png,", "d.png,dog"] if cells else ["a.png", "b.png", "c.png", "d.png"]
    (tmp_path / "m.csv").write_text("\n".join([header] + rows) + "\n")
    src = open_source(tmp_path / "m.csv")
    assert src.keys == ["a.png", "b.png", "c.png", "d.png"]  # the header is not a row
    if cells:
        assert src.label_names == ["cat", "dog"] and src.labels.tolist() == [0, -1, -1, 1]
    else:
        assert src.label_names == [] and src.labels.tolist() == [-1] * 4


def test_manifest_first_row_that_is_neither_header_nor_image(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("notes,cat\na.png,cat\n")
    with pytest.raises(DataError) as info:
        open_source(tmp_path / "m.csv")
    assert str(info.value) == (f"manifest {str(tmp_path / 'm.csv')!r} line 1: 'notes,cat' is neither a header "
                               "'path,label' nor an image row (no image extension and no such file, while later "
                               "rows name images)")
    # An existing extension-less file is a row, even when its name is a header word.
    _png(tmp_path / "file")
    (tmp_path / "m2.csv").write_text("file,cat\na.png,cat\n")
    src = open_source(tmp_path / "m2.csv")
    assert src.keys == ["file", "a.png"] and src.labels.tolist() == [0, 0]
    # Nothing looks like an image file: plain rows, left to fail at load ("file not found").
    (tmp_path / "m3.csv").write_text("x1,1\nx2,2\n")
    assert open_source(tmp_path / "m3.csv").keys == ["x1", "x2"]


# --- 7. keys that would break the one-line-per-file output -------------------------------------------------------

def test_one_line_escapes_like_repr():
    assert _one_line("plain name é.png") == "plain name é.png"
    assert _one_line("a\nb\rc\td\\e") == "a\\nb\\rc\\td\\\\e"
    assert _one_line("\x1b[31mred\udcff.png") == "\\x1b[31mred\\udcff.png"  # no terminal escapes, no bad bytes


def test_cli_skipped_lines_escape_newlines_in_keys(tmp_path):
    folder = tmp_path / "odd"
    _png(folder / "good.png")
    (folder / "bad\nname.png").write_text("not an image")
    (folder / "tab\there.png").write_bytes(b"")
    store = tmp_path / "s.h5"
    runner = CliRunner()
    result = runner.invoke(cli, ["extract", str(folder), "-o", str(store), "--features", "raw", "--workers", "0",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "  skipped bad\\nname.png: not an image (cannot identify file)" in lines
    assert "  skipped tab\\there.png: empty file" in lines
    result = runner.invoke(cli, ["info", str(store), "--skipped"])
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("  skipped ")]
    assert skipped == ["  skipped bad\\nname.png: not an image (cannot identify file)",
                       "  skipped tab\\there.png: empty file"]
    assert np.asarray([line.count("skipped") for line in skipped]).tolist() == [1, 1]


def test_file_names_that_are_not_utf8_get_escaped_keys_and_still_load(tmp_path):
    folder = tmp_path / "bytes"
    _png(folder / "ok.png", 10)
    _png(os.fsdecode(os.fsencode(folder) + b"/cl\xe9/\xff.png"), 200)  # a Latin-1 folder name, a raw 0xFF byte
    src = open_source(folder)
    assert src.keys == ["cl\\xe9/\\xff.png", "ok.png"] and src.label_names == ["cl\\xe9"]
    assert src.labels.tolist() == [0, -1]
    assert all(key.encode("utf-8") for key in src.keys)  # storable and printable as they are
    assert src.load(0, GRAY8)[0, 0, 0] == 200
    store = tmp_path / "s.h5"
    result = CliRunner().invoke(cli, ["extract", str(folder), "-o", str(store), "--features", "raw",
                                      "--workers", "0", "--no-progress"])
    assert result.exit_code == 0 and result.output.startswith("2 rows written"), result.output
