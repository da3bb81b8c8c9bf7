"""The one boundary for outside text: :func:`cxr_core.text.visible` shows every name safely and one-to-one."""

from __future__ import annotations

import itertools

from cxr_core.text import is_clean, name_from_text, name_text, visible


def test_name_text_is_one_to_one_and_reads_back() -> None:
    # A hospital folder held both "\x1b[31mred.png" (ESC byte) and a file literally named "\x1b[31mred.png":
    # they showed, and exported, as the same study id.
    assert name_text("\x1b[31mred") != name_text("\\x1b[31mred")
    # The pieces every collision was made of: backslashes, escape letters, hex digits, controls (C0 and C1), a
    # byte that is not UTF-8 (0x85 and U+0085 are different names), non-printing Latin-1, a printable one.
    alphabet = ["\\", "x", "u", "1", "b", "a", "\x1b", "\x85", "\udc85", "\xa0", "\udca0", "\u202e", "\xff"]
    seen: dict[str, str] = {}
    for n in range(1, 5):
        for parts in itertools.product(alphabet, repeat=n):
            text = "".join(parts)
            shown = name_text(text)
            assert shown.isprintable(), repr(text)
            assert seen.setdefault(shown, text) == text, f"{text!r} and {seen[shown]!r} both show as {shown!r}"
            assert name_from_text(shown) == text
            assert visible(shown) == shown  # printers may show it again: unchanged


def test_plain_text_and_ordinary_backslashes_show_as_themselves() -> None:
    for text in ("Effusion", "No Finding", "ORIGINAL\\PRIMARY\\AXIAL", "C:\\scans\\film 1.png", "é ü 胸部"):
        assert visible(text) == text and name_text(text) == text
    assert visible("\u0085") != visible("\udc85")  # U+0085 (NEL) is not the byte 0x85 that was not UTF-8
    assert visible(visible("a\x1b[2Jb")) == visible("a\x1b[2Jb")  # idempotent: printers apply it again
    assert visible(b"r\xe9sum\xe9.png") == "r\\xe9sum\\xe9.png"
    assert visible("a\tb\nc", lines=True) == "a\tb\nc" and visible("a\tb\nc") == "a\\x09b\\x0ac"
    assert is_clean("C:\\x") and not is_clean("bell\x07") and not is_clean("\udce9")


def test_a_predictions_csv_gives_back_every_name_it_was_given(tmp_path) -> None:
    import numpy as np

    from cxr_core.predictions import Predictions

    ids = ["\x1b[31mred", "\\x1b[31mred", "r\udce9sum\udce9", "=cmd|calc", "plain"]
    labels = ["Effusion", "Ed\x07ema \\u0041"]
    preds = Predictions(labels, np.zeros((5, 2), np.float32), ids, [i + ".png" for i in ids], ids)
    path = tmp_path / "p.csv"
    preds.write(path)
    raw = path.read_bytes()
    assert b"\x1b" not in raw and b"\x07" not in raw  # no control byte in the file
    back = Predictions.read(path)
    assert back.labels == labels and back.study == ids and back.image == [i + ".png" for i in ids]
