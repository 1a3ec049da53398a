"""AUTOMATIC1111's API with the ``webuiapi`` package, unmodified: ``WebUIApi(host, port)``
against a real gateway and olss-digits worker: txt2img draws the digit asked for with A1111's
reply (images, parameters, info with seeds and the PNG's infotext), the read-only routes
answer, progress shows the running job's preview, and interrupt stops the caller's jobs only.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from bench.digits_eval import classify
from tests.protocols.conftest import Services, spawn_protocol_gateway
from tests.support.jobs import wait_for
from tests.support.processes import Gateway

pytestmark = pytest.mark.e2e

SEEDS = (1, 2, 3, 4, 5)
DIGITS = {"width": 16, "height": 16, "cfg_scale": 4, "steps": 5}
KEYS = ("key-alice", "key-bob")


def api(gateway: Gateway, password: str | None = None) -> webuiapi.WebUIApi:
    address = urlsplit(gateway.url)
    return webuiapi.WebUIApi(host=address.hostname, port=address.port, sampler="OLSS", steps=5,
                             username="a1111" if password else None, password=password)


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def keyed_gateway(services: Services) -> Iterator[Gateway]:
    gateway = spawn_protocol_gateway(services.env, api_keys=",".join(KEYS))
    yield gateway
    gateway.stop()


def test_txt2img_draws_the_number_3_with_a1111s_reply(services: Services) -> None:
    client = api(services.gateway)
    images = []
    for seed in SEEDS:
        result = client.txt2img(prompt="the number 3", seed=seed, **DIGITS)
        assert len(result.images) == 1
        image = result.image
        assert (image.format, image.size) == ("PNG", (16, 16))
        assert result.info["all_seeds"] == [seed] and result.info["seed"] == seed
        assert result.info["sampler_name"] == "OLSS" and result.info["sd_model_name"]
        assert result.info["infotexts"] == [image.info["parameters"]]
        assert result.parameters["prompt"] == "the number 3"
        images.append(as_array(image))
    predicted = classify(np.stack(images))
    assert (predicted == 3).mean() >= 0.8, predicted


def test_batch_size_times_n_iter_images_with_consecutive_seeds(services: Services) -> None:
    result = api(services.gateway).txt2img(prompt="the number 8", seed=40, batch_size=2,
                                           n_iter=2, **DIGITS)
    assert len(result.images) == 4
    assert result.info["all_seeds"] == [40, 41, 42, 43]
    assert [text.split("Seed: ")[1].split(",")[0] for text in result.info["infotexts"]] == [
        "40", "41", "42", "43"]


def test_a_random_seed_and_another_sampler_by_its_a1111_name(services: Services) -> None:
    result = api(services.gateway).txt2img(prompt="the number 1", sampler_name="DPM++ 2M",
                                           width=16, height=16, cfg_scale=4, steps=8)
    assert result.info["sampler_name"] == "DPM++ 2M" and result.info["steps"] == 8
    assert 0 <= result.info["seed"] < 2**32


def test_the_read_only_routes_clients_call_first(services: Services) -> None:
    client = api(services.gateway)
    models = client.get_sd_models()
    assert [model["title"] for model in models] == ["olss-digits"]
    names = [sampler["name"] for sampler in client.get_samplers()]
    assert {"OLSS", "DPM++ 2M", "UniPC", "DDIM", "Euler"} <= set(names)
    options = client.get_options()
    assert options["sd_model_checkpoint"] == "olss-digits"
    assert client.get_progress()["state"]["job_count"] == 0
    assert client.get_scripts() == {"txt2img": [], "img2img": []}


def test_the_model_from_override_settings_and_unknown_ones_refused(services: Services) -> None:
    client = api(services.gateway)
    result = client.txt2img(prompt="the number 2",
                            override_settings={"sd_model_checkpoint": "olss-digits"}, **DIGITS)
    assert result.info["sd_model_name"] == "olss-digits"
    with pytest.raises(RuntimeError) as unknown_model:
        client.txt2img(prompt="x", override_settings={"sd_model_checkpoint": "v1-5.ckpt"},
                       **DIGITS)
    assert unknown_model.value.args[0] == 422
    assert "override_settings.sd_model_checkpoint" in unknown_model.value.args[1]
    with pytest.raises(RuntimeError) as unknown_sampler:
        client.txt2img(prompt="x", sampler_name="Euler a", **DIGITS)
    assert unknown_sampler.value.args[0] == 422 and "DPM++ 2M" in unknown_sampler.value.args[1]


def test_fields_that_would_change_the_result_are_named_as_ignored(services: Services) -> None:
    replies: list = []
    client = api(services.gateway)
    client.session.hooks["response"].append(lambda response, **_: replies.append(response))
    client.txt2img(prompt="the number 6", **DIGITS)  # webuiapi's defaults: all no-ops here
    assert "x-olss-ignored-fields" not in replies[-1].headers
    client.txt2img(prompt="the number 6", enable_hr=True, tiling=True, styles=["ink"],
                   override_settings={"CLIP_stop_at_last_layers": 2}, **DIGITS)
    ignored = replies[-1].headers["x-olss-ignored-fields"].split(", ")
    assert ignored == sorted(["enable_hr", "hr_upscaler", "override_settings."
                              "CLIP_stop_at_last_layers", "styles", "tiling"])


def test_progress_shows_the_running_jobs_preview_as_current_image(services: Services) -> None:
    client = api(services.gateway)
    done: list = []
    thread = threading.Thread(target=lambda: done.append(
        client.txt2img(prompt="the number 0", seed=3, width=16, height=16, cfg_scale=4,
                       steps=8)))
    thread.start()
    progress = wait_for(lambda: (p := client.get_progress())["current_image"] and p, 30,
                        "a preview in /sdapi/v1/progress")
    thread.join()
    assert 0 < progress["progress"] < 1
    assert progress["state"]["sampling_steps"] == 8
    with Image.open(io.BytesIO(base64.b64decode(progress["current_image"]))) as preview:
        assert (preview.format, preview.size) == ("WEBP", (16, 16))
    assert len(done[0].images) == 1


def test_interrupt_stops_the_callers_running_job_and_no_one_elses(
    keyed_gateway: Gateway,
) -> None:
    alice, bob = (api(keyed_gateway, key) for key in KEYS)
    results: list = []
    thread = threading.Thread(target=lambda: results.append(
        alice.txt2img(prompt="the number 9", seed=5, width=16, height=16, cfg_scale=4,
                      steps=8)))
    thread.start()
    wait_for(lambda: alice.get_progress()["state"]["sampling_step"] >= 1, 30, "alice's job")
    assert bob.get_progress()["state"]["job_count"] == 0  # bob sees none of alice's jobs
    bob.interrupt()
    thread.join()
    assert len(results[0].images) == 1  # bob's interrupt left alice's job alone

    thread = threading.Thread(target=lambda: results.append(
        alice.txt2img(prompt="the number 9", seed=6, width=16, height=16, cfg_scale=4,
                      steps=8)))
    thread.start()
    wait_for(lambda: alice.get_progress()["state"]["sampling_step"] >= 1, 30, "alice's job")
    alice.interrupt()
    thread.join()
    assert results[1].images == [] and results[1].info == {}


def test_without_the_key_the_a1111_routes_are_401(keyed_gateway: Gateway) -> None:
    assert httpx.get(f"{keyed_gateway.url}/sdapi/v1/sd-models").status_code == 401
    assert httpx.get(f"{keyed_gateway.url}/sdapi/v1/sd-models",
                     headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200
