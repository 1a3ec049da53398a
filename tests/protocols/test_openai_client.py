"""The OpenAI Images API with the ``openai`` package, unmodified: ``OpenAI(base_url=...,
api_key=...).images.generate(...)`` against a real gateway and olss-digits worker draws the
digit asked for, ``url`` replies open, models list, and errors are ``openai`` exceptions with
OpenAI's error object."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from bench.digits_eval import classify
from tests.protocols.conftest import Services, spawn_protocol_gateway
from tests.support.processes import Gateway

pytestmark = pytest.mark.e2e

SEEDS = (1, 2, 3, 4, 5)
KEY = "sk-protocol-test"


def client(gateway: Gateway, api_key: str = "not-checked") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=api_key, max_retries=0,
                         timeout=60)


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def keyed_gateway(services: Services) -> Iterator[Gateway]:
    """A gateway of the same deployment that needs an API key."""
    gateway = spawn_protocol_gateway(services.env, api_keys=KEY)
    yield gateway
    gateway.stop()


def test_images_generate_draws_the_number_3(services: Services) -> None:
    api = client(services.gateway)
    images = []
    for seed in SEEDS:
        result = api.images.generate(model="olss-digits", prompt="the number 3", size="16x16",
                                     response_format="b64_json", extra_body={"seed": seed})
        assert len(result.data) == 1 and result.data[0].url is None
        assert (result.size, result.output_format) == ("16x16", "png")
        images.append(pixels(base64.b64decode(result.data[0].b64_json)))
    predicted = classify(np.stack(images))
    assert (predicted == 3).mean() >= 0.8, predicted


def test_n_images_and_this_services_fields_ride_as_extra_body(services: Services) -> None:
    result = client(services.gateway).images.generate(
        prompt="the number 7", n=2, response_format="b64_json", output_format="webp",
        extra_body={"seed": 11, "steps": 4, "negative_prompt": "the number 1"},
    )
    assert len(result.data) == 2 and result.output_format == "webp"
    for item in result.data:
        with Image.open(io.BytesIO(base64.b64decode(item.b64_json))) as image:
            assert (image.format, image.size) == ("WEBP", (16, 16))


def test_a_url_reply_links_the_jobs_image(services: Services) -> None:
    result = client(services.gateway).images.generate(prompt="the number 5", size="16x16")
    url = result.data[0].url
    assert url is not None and result.data[0].b64_json is None
    assert url.startswith(f"{services.gateway.url}/jobs/")
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    assert pixels(response.content).shape == (16, 16, 3)


def test_models_list_and_retrieve(services: Services) -> None:
    api = client(services.gateway)
    models = api.models.list()
    assert [model.id for model in models.data] == ["olss-digits"]
    assert models.data[0].owned_by == "olss-serve" and models.data[0].created > 0
    assert api.models.retrieve("olss-digits").id == "olss-digits"
    with pytest.raises(openai.NotFoundError) as missing:
        api.models.retrieve("dall-e-3")
    assert missing.value.code == "unknown_model"


def test_errors_are_openai_errors_naming_openai_fields(services: Services) -> None:
    api = client(services.gateway)
    with pytest.raises(openai.BadRequestError) as too_many:
        api.images.generate(prompt="the number 3", n=99)
    assert too_many.value.status_code == 400
    assert (too_many.value.code, too_many.value.param) == ("validation_error", "n")
    assert too_many.value.body["message"] == "n: at most 4 (got 99)"
    assert too_many.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as odd_size:
        api.images.generate(prompt="the number 3", size="17x17")
    assert odd_size.value.param == "size"
    with pytest.raises(openai.BadRequestError) as bad_size:
        api.images.generate(prompt="the number 3", size="big")
    assert bad_size.value.param == "size"
    with pytest.raises(openai.NotFoundError) as unknown:
        api.images.generate(model="dall-e-3", prompt="the number 3")
    assert unknown.value.code == "unknown_model" and "olss-digits" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as unknown_field:
        api.images.generate(prompt="the number 3", extra_body={"guidance": 3})
    assert unknown_field.value.param == "guidance"


def test_with_api_keys_the_key_is_the_clients_and_url_replies_are_signed(
    keyed_gateway: Gateway,
) -> None:
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(keyed_gateway, "sk-wrong").images.generate(prompt="the number 3")
    assert wrong.value.body["type"] == "authentication_error"
    result = client(keyed_gateway, KEY).images.generate(prompt="the number 4", size="16x16")
    url = result.data[0].url
    assert url is not None and "/signed/jobs/" in url and "signature=" in url
    assert httpx.get(url.replace("/signed", "")).status_code == 401  # needs the key
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert httpx.get(tampered).status_code == 404
    response = httpx.get(url)  # no key: the signature stands in for it
    assert response.status_code == 200 and pixels(response.content).shape == (16, 16, 3)
