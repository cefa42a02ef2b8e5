"""Weights, offline first: ``zoo pull`` / ``zoo import``, the lock file, hash checks, offline misses.

Downloads go to real loopback sources only: an HTTP server this file starts on 127.0.0.1 (it can
also cut a transfer short) and ``file://`` URLs. Hub files come from a local Hugging Face cache
written with timm's own ``save_for_hf``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch
from conftest import HUB_REVISION, assert_same_tensors, write_hf_snapshot
from conftest import assert_one_error as one_error_line
from safetensors.torch import save as safetensors_bytes

from zoo_core.errors import OfflineError, WeightsError
from zoo_core.models import create_model

REV = HUB_REVISION
TIMM_NAME = "timm:resnet10t.c3_in1k"
HUB_NAME = "hf-hub:acme/tiny-net"


# --- helpers -------------------------------------------------------------------------------------


def scrambled_state(seed: int, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A resnet10t state dict whose every float tensor is random (never equal to an init)."""
    model = timm.create_model("resnet10t", pretrained=False, num_classes=num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model.state_dict()




def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zoo_home() -> Path:
    return Path(os.environ["ZOO_HOME"])


def home_lock() -> Path:
    return zoo_home() / "zoo.lock"


def read_lock(path: Path | None = None) -> dict:
    return json.loads((path or home_lock()).read_text())["models"]


def entry_with_file(lock: dict, filename: str) -> dict:
    """The lock entry that pins ``filename`` (whatever canonical name it is kept under)."""
    found = [entry for entry in lock.values() if any(item["filename"] == filename for item in entry["files"])]
    assert len(found) == 1, lock
    return found[0]


def files_under(*roots: Path) -> list[Path]:
    """Every file (hidden temporaries included) below the given folders."""
    return sorted(path for root in roots if root.exists() for path in root.rglob("*") if path.is_file())


def download_roots() -> tuple[Path, Path]:
    """Where a URL download may land: Zoo's store and torch.hub's checkpoint folder."""
    return zoo_home() / "weights", Path(os.environ["TORCH_HOME"])


def declare_alias(url: str, digest: str | None = None, name: str = "mynet") -> None:
    """``./zoo.toml`` with an alias whose weights come from ``url``."""
    weights = f'url = "{url}"' + (f', sha256 = "{digest}"' if digest else "")
    Path("zoo.toml").write_text(f'[aliases]\n{name} = {{ target = "timm:resnet10t", weights = {{ {weights} }} }}\n')




def hub_model(seed: int, num_classes: int = 1000) -> torch.nn.Module:
    model = timm.create_model("resnet10t", pretrained=False, num_classes=num_classes)
    model.load_state_dict(scrambled_state(seed, num_classes))
    return model


def flip_last_byte(path: Path) -> None:
    """Corrupt tensor data in place: same size, new content, a later mtime."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    stat = path.stat()
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


# --- the loopback server ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: WeightsServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.server.cut_short:
            self.wfile.write(body[: len(body) // 2])  # promise N bytes, send N/2, hang up
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


class WeightsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_short: set[str] = set()
        self.requests: list[str] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[WeightsServer]:
    httpd = WeightsServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def weights_blob() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A real safetensors file of a resnet10t (bytes) and the tensors it holds."""
    state = scrambled_state(seed=11)
    return safetensors_bytes({key: value.contiguous() for key, value in state.items()}), state


@pytest.fixture
def served(server: WeightsServer, weights_blob) -> tuple[str, bytes, dict[str, torch.Tensor]]:
    """``/w.safetensors`` on the loopback server: (url, bytes, tensors)."""
    blob, state = weights_blob
    server.files["/w.safetensors"] = blob
    return server.url("/w.safetensors"), blob, state


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_OFFLINE", "1")


# --- zoo pull from an HTTP source --------------------------------------------------------------------


def test_pull_fills_the_store_and_pins_source_revision_and_sha256(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))

    result = zoo("pull", "mynet")

    assert result.code == 0, result
    stored = zoo_home() / "weights" / "sha256" / sha256(blob) / "w.safetensors"
    assert stored.read_bytes() == blob
    entry = entry_with_file(read_lock(), "w.safetensors")
    assert entry["source"] == "timm"
    assert "revision" in entry
    assert entry["method"] == "pull"
    assert entry["files"] == [{"filename": "w.safetensors", "sha256": sha256(blob), "size": len(blob), "url": url}]


def test_pull_without_a_catalog_sha256_pins_the_digest_it_downloaded(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url)

    result = zoo("pull", "mynet")

    assert result.code == 0, result
    entry = entry_with_file(read_lock(), "w.safetensors")
    assert entry["files"][0]["sha256"] == sha256(blob)
    assert [path.read_bytes() == blob for path in files_under(*download_roots())] == [True]


def test_pretrained_alias_loads_the_pulled_weights_without_downloading_again(served, server, zoo) -> None:
    url, blob, state = served
    declare_alias(url, sha256(blob))
    assert zoo("pull", "mynet").code == 0

    model = create_model("mynet", pretrained=True)

    assert_same_tensors(model.state_dict(), state)
    assert server.requests == ["/w.safetensors"]


def test_pull_twice_downloads_once(served, server, zoo) -> None:
    url, blob, _ = served
    declare_alias(url)

    assert zoo("pull", "mynet").code == 0
    assert zoo("pull", "mynet").code == 0

    assert server.requests == ["/w.safetensors"]


def test_pull_pins_several_names_in_one_command(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))
    snapshot = write_hf_snapshot("acme/tiny-net", hub_model(seed=19, num_classes=7))

    result = zoo("pull", "mynet", HUB_NAME)

    assert result.code == 0, result
    lock = read_lock()
    assert entry_with_file(lock, "w.safetensors")["files"][0]["sha256"] == sha256(blob)
    assert lock[HUB_NAME]["files"][0]["sha256"] == sha256((snapshot / "model.safetensors").read_bytes())


def test_two_aliases_of_one_architecture_keep_separate_pins(served, server, zoo) -> None:
    url, blob, _ = served
    other = safetensors_bytes({key: value.contiguous() for key, value in scrambled_state(seed=19).items()})
    server.files["/v2.safetensors"] = other
    Path("zoo.toml").write_text(
        "[aliases]\n"
        f'cats-v1 = {{ target = "timm:resnet10t", weights = {{ url = "{url}" }} }}\n'
        f'cats-v2 = {{ target = "timm:resnet10t", weights = {{ url = "{server.url("/v2.safetensors")}" }} }}\n'
    )

    result = zoo("pull", "cats-v1", "cats-v2")

    assert result.code == 0, result
    lock = read_lock()
    assert entry_with_file(lock, "w.safetensors")["files"][0]["sha256"] == sha256(blob)
    assert entry_with_file(lock, "v2.safetensors")["files"][0]["sha256"] == sha256(other)


def test_pretrained_without_pull_downloads_verifies_and_loads_when_online(served, server) -> None:
    url, blob, state = served
    declare_alias(url, sha256(blob))

    model = create_model("mynet", pretrained=True)

    assert_same_tensors(model.state_dict(), state)
    assert server.requests == ["/w.safetensors"]


def test_pull_from_a_file_url(weights_blob, tmp_path: Path, zoo) -> None:
    blob, state = weights_blob
    source = tmp_path / "share" / "w.safetensors"
    source.parent.mkdir()
    source.write_bytes(blob)
    declare_alias(source.as_uri(), sha256(blob))

    result = zoo("pull", "mynet")

    assert result.code == 0, result
    assert entry_with_file(read_lock(), "w.safetensors")["files"][0]["sha256"] == sha256(blob)
    source.unlink()  # loading must use the pulled copy
    assert_same_tensors(create_model("mynet", pretrained=True).state_dict(), state)


@pytest.mark.slow
def test_pull_end_to_end_in_a_real_process(served, zoo_subprocess) -> None:
    url, blob, state = served
    declare_alias(url, sha256(blob))

    process = zoo_subprocess("pull", "mynet")

    assert process.returncode == 0, process.stderr
    assert "pinned" in process.stdout and "w.safetensors" in process.stdout
    assert entry_with_file(read_lock(), "w.safetensors")["files"][0]["sha256"] == sha256(blob)
    assert_same_tensors(create_model("mynet", pretrained=True).state_dict(), state)


# --- failed downloads leave nothing behind ------------------------------------------------------------


@pytest.mark.parametrize("pinned", [True, False], ids=["catalog-sha256", "no-sha256"])
def test_interrupted_download_fails_and_leaves_no_file(pinned: bool, served, server, zoo) -> None:
    url, blob, _ = served
    server.cut_short.add("/w.safetensors")
    declare_alias(url, sha256(blob) if pinned else None)

    line = one_error_line(zoo("pull", "mynet"))

    assert url in line and "cut off" in line
    assert files_under(*download_roots()) == []
    assert not home_lock().exists() and not Path("zoo.lock").exists()


def test_a_retry_after_an_interrupted_download_succeeds(served, server, zoo) -> None:
    url, blob, state = served
    declare_alias(url, sha256(blob))
    server.cut_short.add("/w.safetensors")
    assert zoo("pull", "mynet").code == 2

    server.cut_short.clear()
    result = zoo("pull", "mynet")

    assert result.code == 0, result
    assert files_under(*download_roots()) == [zoo_home() / "weights" / "sha256" / sha256(blob) / "w.safetensors"]
    assert_same_tensors(create_model("mynet", pretrained=True).state_dict(), state)


def test_download_with_the_wrong_sha256_fails_and_leaves_no_file(served, zoo) -> None:
    url, _, _ = served
    wrong = sha256(b"some other file")
    declare_alias(url, wrong)

    line = one_error_line(zoo("pull", "mynet"))

    assert url in line and wrong in line
    assert files_under(*download_roots()) == []
    assert not home_lock().exists()


def test_missing_url_is_a_one_line_error(server, zoo) -> None:
    declare_alias(server.url("/absent.safetensors"))

    line = one_error_line(zoo("pull", "mynet"))

    assert server.url("/absent.safetensors") in line
    assert files_under(*download_roots()) == []


# --- every load verifies against the lock -------------------------------------------------------------


def test_tampered_stored_file_is_a_one_line_error_naming_the_fix(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))
    assert zoo("pull", "mynet").code == 0
    flip_last_byte(zoo_home() / "weights" / "sha256" / sha256(blob) / "w.safetensors")

    line = one_error_line(zoo("transfer", "mynet", "--to", "timm:resnet10t", "--plan"))

    assert "w.safetensors" in line and sha256(blob) in line
    assert "zoo pull mynet" in line


def test_tampered_download_pinned_only_by_the_lock_is_refused(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url)  # no catalog sha256: only zoo.lock knows the digest
    assert zoo("pull", "mynet").code == 0
    (downloaded,) = files_under(*download_roots())
    flip_last_byte(downloaded)

    with pytest.raises(WeightsError, match="zoo.lock pins"):
        create_model("mynet", pretrained=True)


def test_hash_cache_records_digest_and_the_files_identity(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))
    assert zoo("pull", "mynet").code == 0
    stored = zoo_home() / "weights" / "sha256" / sha256(blob) / "w.safetensors"

    create_model("mynet", pretrained=True)

    cache = json.loads((zoo_home() / "hashes.json").read_text())
    stat = stored.stat()
    assert cache[str(stored.resolve())] == {
        "sha256": sha256(blob),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
        "device": stat.st_dev,
    }


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """An in-place edit that hides itself: same size, the old mtime put back with os.utime."""
    stat = path.stat()
    assert len(data) == stat.st_size
    path.chmod(0o644)
    with open(path, "r+b") as handle:  # same inode: only the ctime tells
        handle.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_an_edit_that_restores_size_and_mtime_is_still_refused(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))
    assert zoo("pull", "mynet").code == 0
    stored = zoo_home() / "weights" / "sha256" / sha256(blob) / "w.safetensors"
    create_model("mynet", pretrained=True)  # the digest is now cached
    data = bytearray(blob)
    data[len(data) // 2] ^= 0x01

    rewrite_keeping_size_and_mtime(stored, bytes(data))

    with pytest.raises(WeightsError, match="pins"):
        create_model("mynet", pretrained=True)
    assert json.loads((zoo_home() / "hashes.json").read_text())[str(stored.resolve())]["sha256"] == sha256(bytes(data))


def test_an_unchanged_file_is_not_hashed_again(served, zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))
    assert zoo("pull", "mynet").code == 0
    create_model("mynet", pretrained=True)
    import zoo_core.weights

    hashed: list[Path] = []
    monkeypatch.setattr(zoo_core.weights, "sha256_file", lambda path: hashed.append(path) or sha256(blob))

    create_model("mynet", pretrained=True)

    assert hashed == []


def test_verify_rehashes_every_pinned_file_and_reports_a_tampered_one(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))
    assert zoo("pull", "mynet").code == 0
    ok = zoo("verify")
    assert ok.code == 0, ok
    assert "mynet" in ok.out and "ok" in ok.out
    stored = zoo_home() / "weights" / "sha256" / sha256(blob) / "w.safetensors"
    data = bytearray(blob)
    data[len(data) // 2] ^= 0x01
    rewrite_keeping_size_and_mtime(stored, bytes(data))

    for argv in (("verify",), ("verify", "mynet")):
        result = zoo(*argv)
        line = one_error_line(result, "1 of 1 files failed verification", "mynet", "mismatch")
        assert "zoo pull mynet" in line
        assert "mismatch" in result.out


def test_verify_of_an_empty_lock_says_how_to_pin(zoo) -> None:
    one_error_line(zoo("verify"), "pins nothing yet", "zoo pull NAME")


def test_pulling_an_aliases_target_keeps_the_alias_pin(served, zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    url, blob, _ = served
    declare_alias(url)  # no catalog sha256: the lock is the only pin
    assert zoo("pull", "mynet").code == 0
    write_hf_snapshot("timm/resnet10t.c3_in1k", hub_model(seed=12))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert zoo("pull", TIMM_NAME).code == 0
    (downloaded,) = files_under(*download_roots())
    flip_last_byte(downloaded)

    with pytest.raises(WeightsError, match="zoo pull mynet"):
        create_model("mynet", pretrained=True)


# --- offline: a cache miss names the command that fixes it ---------------------------------------------


@pytest.fixture
def alias_online(served) -> str:
    url, blob, _ = served
    declare_alias(url, sha256(blob))
    return "mynet"


@pytest.mark.parametrize("variable", ["ZOO_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("name", [TIMM_NAME, "torchvision:resnet18", HUB_NAME, "mynet"])
def test_offline_cache_miss_is_one_line_naming_zoo_pull(
    name: str, variable: str, alias_online: str, server, zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "1")

    line = one_error_line(zoo("transfer", name, "--to", "timm:resnet10t", "--plan"))

    assert f"zoo pull {name}" in line
    assert "offline" in line
    assert server.requests == []
    assert files_under(*download_roots()) == []


@pytest.mark.parametrize("name", [TIMM_NAME, "torchvision:resnet18", HUB_NAME])
def test_offline_create_model_raises_offline_error(name: str, offline: None) -> None:
    with pytest.raises(OfflineError, match=f"zoo pull {name}"):
        create_model(name, pretrained=True)


def test_offline_pull_of_a_missing_model_is_one_line(offline: None, zoo) -> None:
    line = one_error_line(zoo("pull", TIMM_NAME))

    assert f"zoo pull {TIMM_NAME}" in line
    assert not home_lock().exists()


# --- hub caches: pin what is there, offline ---------------------------------------------------------


def test_pull_of_a_timm_name_offline_pins_the_cached_hub_snapshot(zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = write_hf_snapshot("timm/resnet10t.c3_in1k", hub_model(seed=13))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    result = zoo("pull", TIMM_NAME)

    assert result.code == 0, result
    entry = read_lock()[TIMM_NAME]
    assert entry["source"] == "timm" and entry["revision"] == REV
    weights = (snapshot / "model.safetensors").read_bytes()
    assert entry["files"][0]["filename"] == "model.safetensors"
    assert entry["files"][0]["sha256"] == sha256(weights)


def test_tampered_hub_file_pinned_by_the_lock_is_refused(zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = write_hf_snapshot("timm/resnet10t.c3_in1k", hub_model(seed=13))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert zoo("pull", TIMM_NAME).code == 0
    flip_last_byte(snapshot / "model.safetensors")

    line = one_error_line(zoo("transfer", TIMM_NAME, "--to", "timm:resnet10t", "--plan"))

    assert "model.safetensors" in line and f"zoo pull {TIMM_NAME}" in line


def test_pull_of_an_hf_hub_repo_offline_pins_the_snapshot_commit(zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = write_hf_snapshot("acme/tiny-net", hub_model(seed=14, num_classes=7))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    result = zoo("pull", HUB_NAME)

    assert result.code == 0, result
    entry = read_lock()[HUB_NAME]
    assert entry["source"] == "hf-hub" and entry["revision"] == REV
    pinned = {item["filename"]: item["sha256"] for item in entry["files"]}
    assert pinned == {name: sha256((snapshot / name).read_bytes()) for name in ("model.safetensors", "config.json")}


def test_info_on_a_cached_hf_hub_repo_works_offline_and_lists_sha256(zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = write_hf_snapshot("acme/tiny-net", hub_model(seed=14, num_classes=7))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    result = zoo("info", HUB_NAME, "--json")

    assert result.code == 0, result
    info = json.loads(result.out)
    assert info["cached"] is True
    assert info["revision"] == REV and info["architecture"] == "resnet10t" and info["num_classes"] == 7
    listed = {item["filename"]: item["sha256"] for item in info["files"]}
    assert listed["model.safetensors"] == sha256((snapshot / "model.safetensors").read_bytes())


def test_info_text_on_a_cached_hf_hub_repo_shows_the_digest(zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = write_hf_snapshot("acme/tiny-net", hub_model(seed=14, num_classes=7))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    result = zoo("info", HUB_NAME)

    assert result.code == 0, result
    assert "cached        yes" in result.out
    assert sha256((snapshot / "model.safetensors").read_bytes()) in result.out


# --- zoo import for air-gapped machines ----------------------------------------------------------------


def test_import_pins_a_local_file_and_loads_it_offline(weights_blob, tmp_path: Path, zoo, monkeypatch) -> None:
    blob, state = weights_blob
    usb = tmp_path / "usb" / "resnet10t.safetensors"
    usb.parent.mkdir()
    usb.write_bytes(blob)
    monkeypatch.setenv("ZOO_OFFLINE", "1")

    result = zoo("import", TIMM_NAME, usb)

    assert result.code == 0, result
    entry = read_lock()[TIMM_NAME]
    assert entry["method"] == "import"
    assert entry["files"] == [{"filename": "resnet10t.safetensors", "sha256": sha256(blob), "size": len(blob)}]
    usb.unlink()  # the import copied it into Zoo's store
    assert_same_tensors(create_model(TIMM_NAME, pretrained=True).state_dict(), state)


def test_import_of_a_torch_checkpoint_loads_its_model_state(tmp_path: Path, zoo, offline: None) -> None:
    state = scrambled_state(seed=15)
    path = tmp_path / "trained.pt"
    torch.save({"model_state_dict": state, "epoch": 3}, path)

    assert zoo("import", TIMM_NAME, path).code == 0

    assert_same_tensors(create_model(TIMM_NAME, pretrained=True).state_dict(), state)


class Payload:
    """Stands for arbitrary code a pickle could run on load."""


def test_import_of_an_unsafe_pickle_fails_and_pins_nothing(tmp_path: Path, zoo, offline: None) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": scrambled_state(seed=16), "payload": Payload()}, path)

    line = one_error_line(zoo("import", TIMM_NAME, path))

    assert "evil.pt" in line and "Payload" in line
    assert not home_lock().exists()
    assert files_under(zoo_home() / "weights") == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_import_of_a_truncated_file_fails_and_pins_nothing(suffix: str, tmp_path: Path, zoo, offline: None) -> None:
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".pt":
        torch.save(scrambled_state(seed=17), whole)
    else:
        whole.write_bytes(safetensors_bytes({k: v.contiguous() for k, v in scrambled_state(seed=17).items()}))
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    line = one_error_line(zoo("import", TIMM_NAME, broken))

    assert f"broken{suffix}" in line
    assert not home_lock().exists()
    assert files_under(zoo_home() / "weights") == []


def test_import_of_weights_for_another_architecture_fails_and_pins_nothing(tmp_path: Path, zoo, offline: None) -> None:
    path = tmp_path / "mobilenet.pt"
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), path)

    line = one_error_line(zoo("import", TIMM_NAME, path))

    assert "mobilenet.pt" in line and TIMM_NAME in line
    assert not home_lock().exists()
    assert files_under(zoo_home() / "weights") == []


def test_import_of_a_missing_file_is_a_one_line_error(zoo, offline: None) -> None:
    line = one_error_line(zoo("import", TIMM_NAME, "nowhere.safetensors"))

    assert "nowhere.safetensors" in line
    assert not home_lock().exists()


# --- which lock file -----------------------------------------------------------------------------------


def test_without_a_project_lock_pins_go_to_zoo_home(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))

    assert zoo("pull", "mynet").code == 0

    assert home_lock().is_file()
    assert not Path("zoo.lock").exists()


def test_a_project_lock_is_used_when_present(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))
    Path("zoo.lock").write_text(json.dumps({"format": 1, "models": {}}))

    result = zoo("pull", "mynet")

    assert result.code == 0, result
    assert str(Path("zoo.lock").resolve()) in result.out
    assert entry_with_file(read_lock(Path("zoo.lock")), "w.safetensors")["files"][0]["sha256"] == sha256(blob)
    assert not home_lock().exists()


def test_loads_verify_against_the_project_lock_over_the_home_lock(zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    write_hf_snapshot("timm/resnet10t.c3_in1k", hub_model(seed=18))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert zoo("pull", TIMM_NAME).code == 0  # the home lock pins the cached file
    project = json.loads(home_lock().read_text())
    project["models"][TIMM_NAME]["files"][0]["sha256"] = sha256(b"the weights a teammate pinned")
    Path("zoo.lock").write_text(json.dumps(project))

    with pytest.raises(WeightsError, match="zoo.lock pins"):
        create_model(TIMM_NAME, pretrained=True)


def test_a_malformed_project_lock_is_a_one_line_error(served, zoo) -> None:
    url, blob, _ = served
    declare_alias(url, sha256(blob))
    Path("zoo.lock").write_text("{not json")

    line = one_error_line(zoo("pull", "mynet"))

    assert "zoo.lock" in line
    assert Path("zoo.lock").read_text() == "{not json"
