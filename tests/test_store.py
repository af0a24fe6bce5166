"""The artifact store (app/store.py) on a local directory and on a real S3 API (moto's server, a
separate process): atomic writes, sizes, ranges, deletion, and the faults a worker tells apart."""

import os
from pathlib import Path

import pytest

from app.settings import Settings
from app.store import ArtifactStore, StoreMisconfigured, StoreUnavailable, redact
from tests.support.network import free_port


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "store"))
    env = request.getfixturevalue("s3_env")
    return ArtifactStore(env["TRAINBOARD_ARTIFACTS_URL"])


def test_put_size_read_range_and_delete(store: ArtifactStore, tmp_path: Path):
    store.probe()
    payload = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "model.pth"
    source.write_bytes(payload)
    key = store.key(7, "model.pth")
    assert store.put_file(source, key) == len(payload)
    assert store.size(key) == len(payload)
    assert b"".join(store.read_chunks(key)) == payload
    assert b"".join(store.read_chunks(key, 1000, 5000)) == payload[1000:6000]
    store.get_file(key, tmp_path / "copy" / "model.pth")
    assert (tmp_path / "copy" / "model.pth").read_bytes() == payload
    store.delete_job(7)
    assert store.size(key) is None
    assert store.size(store.key(8, "model.pth")) is None


def test_a_local_store_never_shows_a_partial_file(tmp_path: Path):
    store = ArtifactStore(str(tmp_path / "store"))
    source = tmp_path / "checkpoint.pt"
    source.write_bytes(b"x" * 1000)
    store.put_file(source, store.key(1, "checkpoint.pt"))
    names = sorted(path.name for path in (tmp_path / "store" / "jobs" / "1").iterdir())
    assert names == ["checkpoint.pt"]


def test_a_missing_bucket_is_a_configuration_error_naming_the_url(s3_env):
    store = ArtifactStore("s3://no-such-bucket-here/prefix")
    with pytest.raises(StoreMisconfigured, match="s3://no-such-bucket-here/prefix"):
        store.probe()


def test_an_unreachable_endpoint_is_a_host_fault(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    store = ArtifactStore(s3_env["TRAINBOARD_ARTIFACTS_URL"])
    with pytest.raises(StoreUnavailable) as raised:
        store.probe()
    assert "unreachable" in str(raised.value) and "test-secret-value" not in str(raised.value)


def test_urls_are_shown_without_credentials():
    assert redact("s3://key:secret@bucket/prefix") == "s3://bucket/prefix"
    assert ArtifactStore("s3://key:secret@bucket/prefix").public_url == "s3://bucket/prefix"


def test_the_url_wins_over_the_directory_and_says_so(tmp_path: Path, caplog):
    settings = Settings(artifacts_dir=tmp_path / "ignored", artifacts_url=str(tmp_path / "shared"), _env_file=None)
    assert settings.store.root == str((tmp_path / "shared").resolve())
    assert str(tmp_path / "ignored") in caplog.text
    plain = Settings(artifacts_dir=tmp_path / "only", _env_file=None)
    assert plain.store.root == str((tmp_path / "only").resolve())
