"""Unit tests of d2ltvm.download and the offline switch (chapters/appendix/downloads.ipynb)."""
import hashlib
import io
import urllib.error
import urllib.request

import pytest

import d2ltvm

PAYLOAD = b"pretend these are weights" * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def served(tmp_path):
    """A file served by a file:// URL, and an empty cache folder."""
    source = tmp_path / "server" / "model.bin"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    return source.as_uri(), tmp_path / "cache"


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                            ("0", False), ("", False), ("no", False)])
def test_is_offline_reads_the_switch(monkeypatch, value, expected):
    monkeypatch.setenv("D2LTVM_OFFLINE", value)
    assert d2ltvm.is_offline() is expected


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("D2LTVM_CACHE", str(tmp_path))
    assert d2ltvm.cache_dir() == tmp_path
    monkeypatch.delenv("D2LTVM_CACHE")
    assert d2ltvm.cache_dir().parts[-2:] == (".cache", "d2ltvm")


def test_file_hash_matches_hashlib(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    assert d2ltvm.file_hash(path, chunk_size=7) == DIGEST
    assert d2ltvm.file_hash(path, "sha1") == hashlib.sha1(PAYLOAD).hexdigest()


def test_download_then_cache_hit(served, monkeypatch):
    url, cache = served
    path = d2ltvm.download(url, DIGEST, folder=cache)
    assert path == cache / "model.bin" and path.read_bytes() == PAYLOAD
    assert leftovers(cache) == ["model.bin"]

    def no_network(*args, **kwargs):
        raise AssertionError("a verified cached file must not be fetched again")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert d2ltvm.download(url, DIGEST.upper(), folder=cache) == path


def test_default_folder_is_the_cache_dir(served, monkeypatch, tmp_path):
    url, _ = served
    monkeypatch.setenv("D2LTVM_CACHE", str(tmp_path / "elsewhere"))
    assert d2ltvm.download(url, DIGEST, filename="renamed.bin") == tmp_path / "elsewhere" / "renamed.bin"


def test_checksum_mismatch_saves_nothing(served):
    url, cache = served
    with pytest.raises(d2ltvm.DownloadError, match=f"sha256 is {DIGEST}, not {'a' * 64}; nothing was saved"):
        d2ltvm.download(url, "a" * 64, folder=cache)
    assert leftovers(cache) == []


def test_corrupt_cached_file_is_reported_and_kept(served):
    url, cache = served
    cache.mkdir()
    (cache / "model.bin").write_bytes(b"truncated")
    with pytest.raises(d2ltvm.DownloadError, match="model.bin exists but its sha256 is .* Delete it"):
        d2ltvm.download(url, DIGEST, folder=cache)
    assert (cache / "model.bin").read_bytes() == b"truncated", "a file the user put there must not be lost"


def test_offline_refuses_the_network_and_says_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("D2LTVM_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("offline mode must not open a URL")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    url = "https://example.org/zoo/resnet18-f37072fd.pth"
    with pytest.raises(d2ltvm.DownloadError) as info:
        d2ltvm.download(url, DIGEST, folder=tmp_path)
    message = str(info.value)
    assert "resnet18-f37072fd.pth is not cached" in message and "D2LTVM_OFFLINE=1" in message
    assert str(tmp_path / "resnet18-f37072fd.pth") in message and url in message and DIGEST in message


def test_offline_still_reads_file_urls(served, monkeypatch):
    monkeypatch.setenv("D2LTVM_OFFLINE", "1")
    url, cache = served
    assert d2ltvm.download(url, DIGEST, folder=cache).read_bytes() == PAYLOAD


def test_failed_connection_raises_download_error(monkeypatch, tmp_path):
    monkeypatch.setenv("D2LTVM_OFFLINE", "0")

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(d2ltvm.DownloadError, match="could not download data.zip .*URLError.*save it as"):
        d2ltvm.download("https://example.org/data.zip", DIGEST, folder=tmp_path)
    assert leftovers(tmp_path) == []


def test_interrupted_download_leaves_no_partial_file(monkeypatch, tmp_path):
    monkeypatch.setenv("D2LTVM_OFFLINE", "0")

    class Dropping(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(size)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Dropping(PAYLOAD * 200))
    with pytest.raises(d2ltvm.DownloadError, match="ConnectionResetError"):
        d2ltvm.download("https://example.org/big.bin", DIGEST, folder=tmp_path)
    assert leftovers(tmp_path) == []


def test_prefix_and_other_algorithms(served):
    url, cache = served
    assert d2ltvm.download(url, DIGEST[:8], folder=cache).read_bytes() == PAYLOAD
    sha1 = hashlib.sha1(PAYLOAD).hexdigest()
    assert d2ltvm.download(url, sha1, filename="again.bin", folder=cache, algorithm="sha1").exists()
    with pytest.raises(d2ltvm.DownloadError, match="its sha1 is"):
        d2ltvm.download(url, DIGEST[:40], filename="third.bin", folder=cache, algorithm="sha1")
    assert leftovers(cache) == ["again.bin", "model.bin"]


@pytest.mark.parametrize("digest", ["", "abc", "abcdef1", None, 123, "g" * 64, DIGEST + "0"])
def test_bad_checksum_argument(digest, served):
    url, cache = served
    with pytest.raises(ValueError, match="checksum must be the sha256 hex digest"):
        d2ltvm.download(url, digest, folder=cache)


def test_unknown_algorithm(served):
    url, cache = served
    with pytest.raises(ValueError, match="unknown hash algorithm 'md7'"):
        d2ltvm.download(url, DIGEST, folder=cache, algorithm="md7")


def test_url_without_a_file_name_needs_filename(tmp_path):
    with pytest.raises(ValueError, match="pass filename="):
        d2ltvm.download("https://example.org/", DIGEST, folder=tmp_path)
