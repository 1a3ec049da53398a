"""Step previews: the latent-to-RGB projection is the least-squares fit it claims to be and
approximates a real VAE's decodes, previews are small WebPs, and the step hook sends them to
the jobs that asked (their own rows of the batch), on their steps, before their last event."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import torch
from PIL import Image

from devtools.host_sync import detect_host_syncs
from olss_core.keys import cancel_key, events_key
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import JobEvent
from olss_core.settings import Settings
from tests.support.queued_jobs import enqueue, job_spec
from tests.support.worker_parts import receive_all
from workers.batch_progress import BatchProgress
from workers.embedded_model import resolve_model
from workers.fault_injection import FaultInjection
from workers.image_decoding import decode_to_pixels
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.previews import (
    LatentProjection,
    StepPreviews,
    cached_projection,
    encode_preview,
    fit_projection,
    preview_size,
    synthetic_images,
)


def test_the_fit_recovers_an_affine_map_exactly() -> None:
    weight = torch.tensor([[0.2, -0.1, 0.05, 0.3], [0.0, 0.4, -0.2, 0.1], [-0.3, 0.1, 0.2, 0.0]])
    bias = torch.tensor([0.5, 0.4, 0.3])
    latents = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    rgb = torch.einsum("bchw,kc->bkhw", latents, weight) + bias[None, :, None, None]
    decoded = torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")
    fitted = LatentProjection.fit(latents, decoded)
    assert torch.allclose(torch.tensor(fitted.weight), weight, atol=1e-4)
    assert torch.allclose(torch.tensor(fitted.bias), bias, atol=1e-4)
    assert LatentProjection.from_json(fitted.to_json()) == fitted


def test_on_olss_digits_it_beats_the_mean_colour_on_held_out_decodes() -> None:
    """Fitted on synthetic images, judged on other ones: the projection explains most of
    what the decoder makes of each latent pixel (R^2 against the pooled decode)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(resolve_model("olss-digits")) / "vae")
    projection = fit_projection(vae, side=16)
    with torch.inference_mode():
        images = synthetic_images(6, 16, seed=123)
        latents = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
        decoded = decode_to_pixels(vae, latents).permute(0, 3, 1, 2).float() / 255
    target = torch.nn.functional.adaptive_avg_pool2d(decoded, latents.shape[-2:])
    predicted = projection.apply(latents).permute(0, 3, 1, 2).float() / 255
    residual = ((predicted - target) ** 2).mean()
    spread = ((target - target.mean()) ** 2).mean()
    assert 1 - residual / spread > 0.7


def test_the_projection_is_cached_per_model(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(resolve_model("olss-digits")) / "vae")
    first = cached_projection(vae, 16, tmp_path, "org/model")
    assert (tmp_path / "previews" / "org--model.json").is_file()
    assert cached_projection(None, 16, tmp_path, "org/model") == first  # type: ignore[arg-type]


@pytest.mark.parametrize(("width", "height", "size"), [
    (16, 16, (16, 16)), (512, 512, (128, 128)), (512, 768, (85, 128)), (1024, 256, (128, 32)),
])
def test_previews_are_at_most_128_pixels_on_a_side(width: int, height: int, size: tuple) -> None:
    assert preview_size(width, height) == size
    preview = encode_preview(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy(), size)
    with Image.open(io.BytesIO(base64.b64decode(preview.data_base64))) as image:
        assert (image.format, image.size) == ("WEBP", size)
    assert (preview.width, preview.height, preview.content_type) == (*size, "image/webp")


def events(db: redis.Redis, job_id: str) -> list[JobEvent]:
    return [JobEvent.from_fields(fields) for _, fields in db.xrange(events_key(job_id))]


def test_the_hook_previews_the_rows_of_the_jobs_that_asked(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics,
) -> None:
    """Three jobs in one batch: the first (two images) asked for a preview every 2 steps, the
    second for none, the third for every step; each preview shows its own job's first row."""
    ids = enqueue(settings, [job_spec(num_images=2, preview_every=2), job_spec(),
                             job_spec(preview_every=1)])
    jobs = [job for _, job in lifecycle.start(receive_all(lifecycle, leases))]
    red = LatentProjection(((1, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0)), (0.0, 0.0, 0.0))
    previews = StepPreviews(red, lifecycle.progress)
    progress = BatchProgress(jobs, lifecycle, leases, metrics, FaultInjection(), previews)
    latents = torch.zeros(4, 4, 4, 4)
    latents[0, 0], latents[3, 0] = 1.0, 0.5  # rows: job 1 (0, 1), job 2 (2), job 3 (3)
    for step in range(1, 6):
        assert progress(step, 5, latents)
    previews.close()

    def shown(job_id: str) -> dict[int, int]:
        """Step -> the red level of the preview's centre pixel."""
        levels = {}
        for event in events(db, job_id):
            if event.preview is not None:
                data = base64.b64decode(event.preview.data_base64)
                with Image.open(io.BytesIO(data)) as image:
                    levels[event.step] = image.convert("RGB").getpixel((16, 16))[0]
        return levels

    first, second, third = (shown(job_id) for job_id in ids)
    assert sorted(first) == [2, 4] and all(level > 240 for level in first.values())
    assert second == {}
    assert sorted(third) == [1, 2, 3, 4] and all(100 < v < 155 for v in third.values())
    for job_id in ids:  # every job has its five step events, in order
        assert [e.step for e in events(db, job_id) if e.type == "step"] == [1, 2, 3, 4, 5]


def test_a_canceled_jobs_previews_come_before_its_finished_event(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics,
) -> None:
    (job_id,) = enqueue(settings, [job_spec(preview_every=1)])
    jobs = [job for _, job in lifecycle.start(receive_all(lifecycle, leases))]
    previews = StepPreviews(LatentProjection(((0.1,) * 4,) * 3, (0.5, 0.5, 0.5)),
                            lifecycle.progress)
    progress = BatchProgress(jobs, lifecycle, leases, metrics, FaultInjection(), previews)
    latents = torch.zeros(1, 4, 4, 4)
    assert progress(1, 5, latents)
    db.set(cancel_key(job_id), "1")
    assert not progress(2, 5, latents)
    previews.close()
    kinds = [(event.type, event.preview is not None) for event in events(db, job_id)]
    assert kinds[-2:] == [("step", True), ("finished", False)]


def test_without_latents_or_a_previewer_the_hook_is_as_before(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics,
) -> None:
    (job_id,) = enqueue(settings, [job_spec(preview_every=1)])
    jobs = [job for _, job in lifecycle.start(receive_all(lifecycle, leases))]
    assert BatchProgress(jobs, lifecycle, leases, metrics, FaultInjection())(1, 5)
    steps = [event for event in events(db, job_id) if event.type == "step"]
    assert [(event.step, event.preview) for event in steps] == [(1, None)]


def test_after_the_first_preview_the_serving_thread_uploads_nothing() -> None:
    """On the meta device (a GPU's stand-in, ``devtools.host_sync``): the rows are views and the
    projection's tensors stay on the device, so a preview does not wait for the step in flight.
    (The background thread's encoding of meta pixels fails; it is logged, never raised.)"""
    jobs = [SimpleNamespace(id=f"job-{n}", spec=job_spec()) for n in range(2)]
    previews = StepPreviews(LatentProjection(((0.1,) * 4,) * 3, (0.5, 0.5, 0.5)),
                            lambda *_: None)
    latents = torch.zeros(3, 4, 8, 8, device="meta")
    rows = {"job-0": 0, "job-1": 2}
    previews.send(jobs, rows, latents, 1, 4)  # uploads the projection's tensors once
    with detect_host_syncs("meta") as found:
        previews.send(jobs, rows, latents, 2, 4)
    previews.close()
    assert found == []
