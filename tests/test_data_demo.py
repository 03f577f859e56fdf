"""`fastpix data demo --out DIR` writes into a new or empty folder only, unless --force (issue 26 item 5)."""

import os

from fastpix import cli


def test_a_non_empty_folder_is_refused_in_one_line_and_left_as_it_was(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "0000.png").write_bytes(b"a user's image")
    assert cli.main(["data", "demo", "--out", str(tmp_path), "--train", "2", "--val", "0", "--test", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {tmp_path} is not empty" in err and "--force" in err
    assert os.listdir(tmp_path / "train") == ["0000.png"]
    assert (tmp_path / "train" / "0000.png").read_bytes() == b"a user's image"


def test_force_writes_into_it_and_an_empty_or_new_folder_needs_no_force(tmp_path):
    (tmp_path / "old.txt").write_text("kept")
    args = ["--size", "16", "--train", "2", "--val", "1", "--test", "1"]
    assert cli.main(["data", "demo", "--out", str(tmp_path), "--force", *args]) == 0
    assert sorted(os.listdir(tmp_path)) == ["old.txt", "test", "train", "val"]
    (tmp_path / "empty").mkdir()
    assert cli.main(["data", "demo", "--out", str(tmp_path / "empty"), *args]) == 0
    assert cli.main(["data", "demo", "--out", str(tmp_path / "new"), *args]) == 0
    assert sorted(os.listdir(tmp_path / "new" / "train")) == ["0000.png", "0001.png"]
