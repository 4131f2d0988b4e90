import gzip

import pytest

from noisyact.experiments.textfiles import read_lines


def test_reads_plain_and_gz_files_with_a_limit(tmp_path):
    text = "one\r\ntwo\nthree\n"
    (tmp_path / "a.txt").write_bytes(text.encode())
    with gzip.open(tmp_path / "a.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write(text)
    for name in ("a.txt", "a.txt.gz"):
        assert read_lines(tmp_path / name) == (["one", "two", "three"], 3)
        assert read_lines(tmp_path / name, limit=2) == (["one", "two"], 3)


def test_a_bad_byte_far_into_the_file_is_located_in_the_file_not_the_buffer(tmp_path):
    data = b"word " * 40_000 + b"\xff tail\n"  # past the text stream's decoding buffer
    for name, write in (("big.txt", lambda p: p.write_bytes(data)),
                        ("big.txt.gz", lambda p: p.write_bytes(gzip.compress(data)))):
        write(tmp_path / name)
        with pytest.raises(ValueError, match=f"{name} is not UTF-8 text \\(byte 0xff at offset "
                                             "200000\\); fix it"):
            read_lines(tmp_path / name, hint="fix it")


@pytest.mark.parametrize(("content", "message"), [
    (None, "is missing; fix it"),
    (b" \n\n", "is empty; fix it"),
])
def test_missing_and_empty_files_are_named(tmp_path, content, message):
    f = tmp_path / "x.txt"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(ValueError, match=f"x.txt {message}"):
        read_lines(f, hint="fix it")


def test_a_damaged_gz_file_cannot_be_read(tmp_path):
    f = tmp_path / "x.gz"
    f.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"x\.gz cannot be read"):
        read_lines(f)
