"""Writing files (faults as one-line errors, the user's umask) and memory (estimated before allocating)."""
import errno
import os

import pytest
import timm
import torch

import patnet  # noqa: F401
from patnet.device import check_memory, forward_bytes, out_of_memory_errors
from patnet.errors import UnwritablePathError, UserError
from patnet.fileio import atomic_directory, atomic_path, make_directory, write_bytes_durable, write_text_atomic


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def mode(path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_a_file_where_a_folder_is_needed_names_that_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(UnwritablePathError, match=rf"^cannot write {tmp_path}/taken/sub/report.json: {tmp_path}/taken "
                                                  r"is a file, not a folder; remove that file or choose another path$"):
        write_text_atomic(tmp_path / "taken" / "sub" / "report.json", "{}")
    with pytest.raises(UnwritablePathError, match="taken is a file, not a folder"):
        make_directory(tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "x"


def test_a_folder_given_as_a_file_name(tmp_path):
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(UnwritablePathError, match="model.onnx: it is a folder; give a file name"):
        write_text_atomic(tmp_path / "model.onnx", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left behind


@pytest.mark.parametrize("fault, words", [(errno.ENOSPC, "no space is left on the device; free some space"),
                                          (errno.EDQUOT, "the disk quota is exceeded"),
                                          (errno.EROFS, "the file system is read-only")])
def test_a_full_disk_or_read_only_file_system_while_writing(tmp_path, monkeypatch, fault, words):
    def failing_fsync(fd):
        raise OSError(fault, os.strerror(fault))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(UnwritablePathError, match=f"cannot write {tmp_path}/ckpt: {words}"):
        with atomic_directory(tmp_path / "ckpt") as staging:
            write_bytes_durable(staging / "weights", b"1234")
    assert list(tmp_path.iterdir()) == []  # the staging folder is gone


def test_permission_denied_names_the_target(tmp_path, monkeypatch):
    real_open = open

    def refused(path, *args, **kwargs):  # what a folder without write permission answers (root is never refused)
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refused)
    with pytest.raises(UnwritablePathError, match=f"cannot write {tmp_path}/m.pt: permission denied; choose a folder "
                                                  "you can write to"):
        with atomic_path(tmp_path / "m.pt") as temporary:
            with open(temporary, "wb") as f:
                f.write(b"x")


def test_other_errors_inside_a_write_pass_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError):  # reading a missing input is not a write fault
        with atomic_path(tmp_path / "out.txt") as temporary:
            temporary.write_text((tmp_path / "elsewhere" / "missing.txt").read_text())
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "out.txt"):
            raise KeyError("a bug")
    assert list(tmp_path.iterdir()) == []


def test_files_get_the_users_umask_whatever_mode_their_writer_chose(tmp_path, umask_027):
    with atomic_path(tmp_path / "private.bin") as temporary:  # as safetensors' save_file does: mode 0600
        os.close(os.open(temporary, os.O_CREAT | os.O_WRONLY, 0o600))
    assert mode(tmp_path / "private.bin") == oct(0o640)
    with atomic_directory(tmp_path / "folder") as staging:
        os.close(os.open(staging / "inner.bin", os.O_CREAT | os.O_WRONLY, 0o600))
        (staging / "sub").mkdir(mode=0o700)
    assert (mode(tmp_path / "folder"), mode(tmp_path / "folder" / "inner.bin"), mode(tmp_path / "folder" / "sub")) \
        == (oct(0o750), oct(0o640), oct(0o750))


def test_a_symlink_written_atomically_keeps_its_target_mode(tmp_path, umask_027):
    (tmp_path / "target").write_text("x")
    os.chmod(tmp_path / "target", 0o600)
    with atomic_path(tmp_path / "link") as temporary:
        temporary.symlink_to("target")
    assert (tmp_path / "link").is_symlink() and mode(tmp_path / "target") == oct(0o600)


def test_the_memory_estimate_is_a_lower_bound_that_grows_with_the_input():
    model = timm.create_model("patnet_t0")
    small, large = forward_bytes(model, 1, 3, 64, 64), forward_bytes(model, 1, 3, 1024, 1024)
    assert 3 * 64 * 64 * 4 < small < large
    assert large >= 3 * 1024 * 1024 * 4 + 32 * 256 * 256 * 4  # the input and the stem's output at least


def test_a_size_that_cannot_fit_is_refused_before_allocating():
    model = timm.create_model("patnet_t0")
    with pytest.raises(UserError, match=r"exporting needs at least [\d.]+ GiB of memory but cpu has [\d.]+ GiB "
                                        r"free; use a smaller --img-size"):
        check_memory(forward_bytes(model, 1, 3, 100_000, 100_000), torch.device("cpu"), "exporting",
                     "use a smaller --img-size")


def test_an_allocation_failure_becomes_one_line_and_other_errors_pass():
    with pytest.raises(UserError, match=r"^making a tensor ran out of memory \(it tried to allocate [\d.]+ GiB\); "
                                        r"ask for less$"):
        with out_of_memory_errors("making a tensor", "ask for less"):
            torch.empty(2 ** 60, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="unrelated"):
        with out_of_memory_errors("x", "y"):
            raise RuntimeError("unrelated")
