"""ControlNet pieces without services: registry entries, the batch key, the canny preprocessor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydantic import ValidationError

from latentq.models import PACKAGED_REGISTRY, ControlNetSpec, build_registry
from tests.unit.test_batching import spec
from worker.rounds import batch_key


def test_packaged_registry_registers_the_embedded_controlnets():
    registry = build_registry(PACKAGED_REGISTRY, (), None)
    [controlnet] = registry.controlnets_for("sd1")
    assert (controlnet.id, controlnet.control_type, controlnet.embedded_name) == (
        "tiny-sd-scribble", "scribble", "tiny-sd-controlnet",
    )  # fmt: skip
    [xl] = registry.controlnets_for("sdxl")
    assert (xl.id, xl.control_type, xl.embedded_name) == ("tiny-sdxl-canny", "canny", "tiny-sdxl-controlnet")
    assert registry.controlnets_for("turbo") == []


def test_controlnet_tables_are_read_from_a_registry_file(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        '[[models]]\nid = "sd15"\nsource = "/m/sd15"\nfamily = "sd1"\n\n'
        '[[controlnets]]\nid = "canny-15"\nsource = "/m/cn-canny"\nfamily = "sd1"\ncontrol_type = "canny"\n'
        '[[controlnets]]\nid = "depth-xl"\nsource = "/m/cn-depth"\nfamily = "sdxl"\ncontrol_type = "depth"\n'
    )
    registry = build_registry(path, (), None)
    assert [c.id for c in registry.controlnets_for("sd1")] == ["canny-15"]
    assert registry.controlnets["depth-xl"].embedded_name is None


@pytest.mark.parametrize(
    "entry",
    [{"family": "upscaler-x4"}, {"control_type": "colour"}, {"id": "bad id"}, {"source": ""}, {"extra": 1}],
)
def test_bad_controlnet_entries_are_refused(entry):
    good = {"id": "cn", "source": "/m/cn", "family": "sd1", "control_type": "canny"}
    with pytest.raises(ValidationError):
        ControlNetSpec.model_validate({**good, **entry})


def test_a_controlled_job_samples_alone():
    controlled = {"control_model": "cn", "control_image_key": "a/inputs/control.png"}
    assert batch_key(spec("x", **controlled)) is None
    assert batch_key(spec("x")) is not None


def test_canny_finds_the_outline_of_a_square_one_pixel_wide():
    from worker.diffusion.edges import canny_edges

    image = Image.new("RGB", (64, 48), "black")
    ImageDraw.Draw(image).rectangle((16, 12, 47, 35), fill=(200, 120, 40))
    edges = canny_edges(image)
    assert edges.mode == "RGB" and edges.size == image.size
    found = np.asarray(edges)[:, :, 0]
    assert set(np.unique(found)) == {0, 255}
    rows, columns = np.nonzero(found)
    # The outline, and nothing else: inside and outside the square stay black.
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (12, 36, 16, 48)
    assert not found[16:32, 20:44].any()
    assert list(np.nonzero(found[24])[0]) == [16, 48]  # each side one pixel wide


def test_canny_of_a_flat_image_is_empty():
    from worker.diffusion.edges import canny_edges

    assert not np.asarray(canny_edges(Image.new("RGB", (32, 32), "grey"))).any()
