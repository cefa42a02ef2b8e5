"""Offline by accident: without ZOO_OFFLINE, no network means a quick, one-line error naming the fixes.

Nothing here touches the network. A machine without it is a ``HF_ENDPOINT`` or URL on a
127.0.0.1 port where nothing listens; a host that is up but silent is a socket that accepts
connections and never answers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_one_error
from test_weights import declare_alias, download_roots, files_under

from zoo_core import network
from zoo_core.errors import UnreachableError
from zoo_core.models import create_model

HUB_NAME = "hf-hub:timm/resnet10t.c3_in1k"
TIMM_NAME = "timm:resnet10t.c3_in1k"  # timm keeps this tag's weights on the hub
FIXES = ("--no-pretrained", "ZOO_OFFLINE=1")
QUICK_S = 10  # the hub client's retries took 24 s on a refused port, more without network


@pytest.fixture(autouse=True)
def fresh_hosts() -> Iterator[None]:
    """Each test probes hosts anew, and leaves no remembered port to the tests after it."""
    network.forget_hosts()
    yield
    network.forget_hosts()


def closed_port() -> int:
    """A 127.0.0.1 port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


@pytest.fixture
def silent_host() -> Iterator[str]:
    """``http://127.0.0.1:PORT``: the kernel completes the handshake, nobody ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def timed(run, *argv: str):
    started = time.monotonic()
    result = run(*argv)
    return result, time.monotonic() - started


# --- an unreachable hub ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (("pull", HUB_NAME), HUB_NAME),
        (("info", HUB_NAME), HUB_NAME),
        (
            ("finetune", "--recipe", "linear-probe", "--model", TIMM_NAME, "--data", "{data}", "--image-size", "32"),
            TIMM_NAME,
        ),
    ],
    ids=["pull", "info", "finetune-pretrained"],
)
def test_an_unreachable_hub_fails_quickly_with_one_line_naming_the_fixes(
    argv: tuple[str, ...], name: str, no_hub: str, image_folder: Path, zoo
) -> None:
    result, elapsed = timed(zoo, *(arg.format(data=image_folder) for arg in argv))

    line = assert_one_error(result, "cannot reach 127.0.0.1", f"zoo import {name} FILE", *FIXES)
    assert no_hub.removeprefix("http://") in line
    assert elapsed < QUICK_S


def test_an_unreachable_hub_raises_unreachable_error_from_the_api(no_hub: str) -> None:
    with pytest.raises(UnreachableError, match=f"zoo import {TIMM_NAME} FILE"):
        create_model(TIMM_NAME, pretrained=True)


def test_a_hosts_answer_is_remembered_for_the_process() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/w.safetensors"
        network.require_reachable(url)
    network.require_reachable(url)  # closed now, but known to be up: no second probe

    network.forget_hosts()
    with pytest.raises(UnreachableError, match="connection refused"):
        network.require_reachable(url)


# --- URL downloads --------------------------------------------------------------------------------------


def test_an_unreachable_url_host_fails_with_one_line_naming_the_fixes(zoo) -> None:
    declare_alias(f"http://127.0.0.1:{closed_port()}/w.safetensors")

    assert_one_error(zoo("pull", "mynet"), "cannot reach 127.0.0.1", "connection refused", *FIXES)
    assert files_under(*download_roots()) == []


def test_a_silent_host_gives_up_after_zoo_download_timeout(silent_host: str, zoo, monkeypatch) -> None:
    declare_alias(f"{silent_host}/w.safetensors")
    monkeypatch.setenv("ZOO_DOWNLOAD_TIMEOUT", "1")

    result, elapsed = timed(zoo, "pull", "mynet")

    assert_one_error(result, f"{silent_host}/w.safetensors", "no data for 1s", "ZOO_DOWNLOAD_TIMEOUT")
    assert elapsed < 5
    assert files_under(*download_roots()) == []


@pytest.mark.parametrize("variable", ["ZOO_DOWNLOAD_TIMEOUT", "ZOO_CONNECT_TIMEOUT"])
@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan"])
def test_a_bad_timeout_is_one_line_naming_the_variable(variable: str, value: str, zoo, monkeypatch) -> None:
    declare_alias(f"http://127.0.0.1:{closed_port()}/w.safetensors")
    monkeypatch.setenv(variable, value)

    assert_one_error(zoo("pull", "mynet"), variable, repr(value), "seconds > 0")
