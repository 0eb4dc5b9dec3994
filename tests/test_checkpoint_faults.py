"""Nothing lost, nothing cryptic, for checkpoints, in this process: a folder that cannot be locked
(a network file system without locks) is one warning and the job goes on. The faults met through
train.py, sample.py and heads.report (one run per out_dir, no trained run replaced by accident, a
full disk, Ctrl-C mid-save, damaged checkpoints) are in tests/test_checkpoint_faults_cli.py."""
from __future__ import annotations


def test_a_folder_that_cannot_be_locked_is_a_warning_and_the_job_goes_on(tmp_path, monkeypatch, capsys):
    import errno
    import fcntl

    from common.folders import folder_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # what some network file systems answer
    with folder_lock(tmp_path / "out", "out_dir"):
        (tmp_path / "out" / "ran").touch()
    assert (tmp_path / "out" / "ran").exists()
    assert capsys.readouterr().err == (f"warning: cannot lock {tmp_path / 'out'} (No locks available): nothing stops "
                                       "a second job from using it at the same time\n")


def test_only_our_own_temp_files_are_debris(tmp_path):
    """A user's notes.tmp in out_dir is theirs; a temp file this project left behind is removed when the
    folder is next locked. Through train.py after a kill -9: tests/test_checkpoint_faults_cli.py."""
    from common.folders import folder_lock, temp_path

    folder = tmp_path / "out"
    folder.mkdir()
    theirs = {"thesis.tmp": "notes", ".hidden.tmp": "mine", "ckpt.pt.tmp": "also mine"}
    for name, text in theirs.items():
        (folder / name).write_text(text)
    ours = temp_path(folder / "ckpt.pt")
    ours.write_bytes(b"half a checkpoint")
    with folder_lock(folder, "out_dir"):
        assert not ours.exists()
        assert {name: (folder / name).read_text() for name in theirs} == theirs
