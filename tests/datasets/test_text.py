"""stdlib_corpus: sorted files, byte budget, compact vocabulary, contiguous split; windows."""

import pytest
import torch

from overparam.datasets.text import source_files, stdlib_corpus, windows


def _tree(root):
    (root / "b").mkdir()
    (root / "site-packages").mkdir()
    (root / "a.py").write_bytes(b"abc\n")
    (root / "b" / "c.py").write_bytes(b"zz\n")
    (root / "b" / "notes.txt").write_bytes(b"ignored")
    (root / "site-packages" / "x.py").write_bytes(b"installed")
    (root / "ab.py").write_bytes(b"\xc3\xa9!\n")  # 'é!' in UTF-8
    return root


def test_files_sorted_by_relative_path_skipping_installed_packages(tmp_path):
    root = _tree(tmp_path)
    assert [p.relative_to(root).as_posix() for p in source_files(root)] == [
        "a.py",
        "ab.py",
        "b/c.py",
    ]


def test_corpus_bytes_vocab_split_and_budget(tmp_path):
    root = _tree(tmp_path)
    text = b"abc\n" + b"\xc3\xa9!\n" + b"zz\n"
    corpus = stdlib_corpus(max_bytes=100, valid_fraction=0.3, root=root)
    assert corpus.vocab == tuple(sorted(set(text)))
    tokens = torch.cat([corpus.train, corpus.valid])
    assert bytes(torch.tensor(corpus.vocab)[tokens].tolist()) == text  # exact round trip
    assert corpus.train.numel() == round(len(text) * 0.7) and corpus.valid.numel() == 3
    assert corpus.decode(corpus.valid) == "zz\n" and corpus.files == ("a.py", "ab.py", "b/c.py")
    cut = stdlib_corpus(max_bytes=5, valid_fraction=0.4, root=root)  # the second file is cut
    assert cut.files == ("a.py", "ab.py") and cut.train.numel() + cut.valid.numel() == 5
    assert cut.decode(torch.cat([cut.train, cut.valid])) == "abc\n\ufffd"  # cut inside 'é'


def test_stdlib_corpus_is_deterministic_python_source():
    first, second = stdlib_corpus(max_bytes=20_000), stdlib_corpus(max_bytes=20_000)
    assert torch.equal(first.train, second.train) and first.files == second.files
    assert first.train.numel() + first.valid.numel() == 20_000
    assert first.valid.numel() == 2_000 and first.files[0].endswith(".py")
    assert all("site-packages" not in f for f in first.files)
    assert first.train.dtype == torch.int64 and int(first.train.max()) < first.vocab_size


def test_windows_are_next_token_pairs():
    tokens = torch.arange(50)
    x, y = windows(tokens, 8, 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 8)
    assert torch.equal(y, x + 1) and int(y.max()) <= 49  # targets are the following tokens
    again = windows(tokens, 8, 5, torch.Generator().manual_seed(0))[0]
    assert torch.equal(x, again)


def test_bad_arguments_are_named(tmp_path):
    root = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"`max_bytes` must be an integer >= 2, got 0"):
        stdlib_corpus(max_bytes=0, root=root)
    with pytest.raises(ValueError, match=r"`valid_fraction` must be in \(0, 1\), got 1.0"):
        stdlib_corpus(valid_fraction=1.0, root=root)
    with pytest.raises(ValueError, match=r"`root` must be an existing directory"):
        stdlib_corpus(root=tmp_path / "missing")
    with pytest.raises(ValueError, match=r"too few for a train/validation split"):
        stdlib_corpus(max_bytes=2, valid_fraction=0.01, root=root)
    with pytest.raises(ValueError, match=r"`context` must be an integer >= 1, got 0"):
        windows(torch.arange(10), 0, 1, torch.Generator())
    with pytest.raises(ValueError, match=r"at least context \+ 1 = 11 entries, got shape \(10,\)"):
        windows(torch.arange(10), 10, 1, torch.Generator())
