"""Detectors on tiny models built offline, loaded through the same code as hub ids and checkpoints.

Random weights give noise detections, so real runs are checked for structure; the mapping of model
outputs to frame pixels (GroundingDINO's relative boxes, OWLv2's square padding, YOLO's letterbox)
is checked exactly on known outputs.
"""

import pytest
import torch
from PIL import Image
from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoObjectDetectionOutput
from transformers.models.owlv2.modeling_owlv2 import Owlv2ObjectDetectionOutput

from mmcof_gen.models.detector import DetectorConfig, DetectorError
from mmcof_gen.models.detector_factory import detector
from mmcof_gen.models.grounding_dino import prompt
from mmcof_gen.models.yolo_world import letterbox, unletterbox
from mmcof_gen.schema import Detection
from tests.support.tiny_models import build_tiny_grounding_dino, build_tiny_owlv2, build_tiny_yolo

BACKENDS = ["grounding-dino", "owlv2", "yolo-world", "yoloe"]
PHRASES = ["red car", "street sign", "clock", "cat", "dog"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """backend -> DetectorConfig fields that point at a tiny model of that backend."""
    root = tmp_path_factory.mktemp("detectors")
    models = {"grounding-dino": {"model": str(build_tiny_grounding_dino(root / "gdino"))},
              "owlv2": {"model": str(build_tiny_owlv2(root / "owlv2"))}}
    for backend in ("yolo-world", "yoloe"):
        checkpoint, embeddings = build_tiny_yolo(root / backend, backend, PHRASES)
        models[backend] = {"model": str(checkpoint), "text_embeddings": embeddings, "image_size": 64}
    return models


def make(tiny_models, backend, **settings):
    return detector(DetectorConfig(backend=backend, **{**tiny_models[backend], **settings}))


def sigmoid(x: float) -> float:
    return float(torch.sigmoid(torch.tensor(x)))


def assert_same(found: list[list[Detection]], expected: list[list[tuple]]):
    """Boxes and labels exactly, scores to float32 precision."""
    assert [[(d.box, d.label) for d in frame] for frame in found] == [[(b, label) for b, _, label in frame]
                                                                    for frame in expected]
    assert [[d.score for d in frame] for frame in found] == [[pytest.approx(s, rel=1e-5) for _, s, _ in frame]
                                                            for frame in expected]


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_answers_a_batch_with_one_list_per_frame(tiny_models, backend):
    requests = [(Image.new("RGB", (120, 80), "red"), ["red car", "street sign"]),
                (Image.new("RGB", (40, 40), "white"), []),
                (Image.new("RGB", (50, 90), "blue"), ["clock", " clock ", ""])]
    found = make(tiny_models, backend, box_threshold=0.0, max_detections=3, batch_size=2).detect(requests)

    assert len(found) == 3
    assert found[1] == []
    for (frame, phrases), detections in zip(requests, found):
        assert len(detections) <= 3
        assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)
        for d in detections:
            x1, y1, x2, y2 = d.box
            assert all(isinstance(v, int) for v in d.box)
            assert 0 <= x1 < x2 <= frame.width and 0 <= y1 < y2 <= frame.height
            assert d.label in [p.strip() for p in phrases]
    assert found[0] and found[2]  # threshold 0 keeps the noise of random weights


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_is_one_forward_pass_per_batch_size_frames(tiny_models, backend):
    model = make(tiny_models, backend, batch_size=2)
    batch_sizes = []
    if backend in ("yolo-world", "yoloe"):
        model.model.model[0].register_forward_hook(lambda module, args, out: batch_sizes.append(args[0].shape[0]))
    else:
        model.model.register_forward_hook(lambda module, args, kwargs, out:
                                          batch_sizes.append(kwargs["pixel_values"].shape[0]), with_kwargs=True)
    frames = [Image.new("RGB", (64 + 8 * i, 64), "gray") for i in range(4)]
    model.detect([(frames[0], ["cat"]), (frames[1], []), (frames[2], ["dog", "cat"]), (frames[3], ["clock"])])

    assert batch_sizes == [2, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_threshold_and_max_detections_filter(tiny_models, backend):
    requests = [(Image.new("RGB", (96, 64), "green"), ["cat", "dog"])]
    everything = make(tiny_models, backend, box_threshold=0.0, max_detections=50).detect(requests)[0]
    cut = sorted(d.score for d in everything)[len(everything) // 2]
    strict = make(tiny_models, backend, box_threshold=cut, max_detections=50).detect(requests)[0]
    capped = make(tiny_models, backend, box_threshold=0.0, max_detections=1).detect(requests)[0]

    assert strict == [d for d in everything if d.score > cut]
    assert capped == everything[:1]


def test_grounding_dino_maps_relative_boxes_to_frame_pixels_and_tokens_to_phrases(tiny_models):
    gdino = make(tiny_models, "grounding-dino", box_threshold=0.3, text_threshold=0.25)
    frames = [Image.new("RGB", (128, 80)), Image.new("RGB", (48, 96))]
    phrases = [["red car", "street sign"], ["clock"]]
    input_ids = gdino.processor.tokenizer([prompt(p) for p in phrases], padding=True, return_tensors="pt").input_ids
    # [CLS] red car . street sign . [SEP]  and  [CLS] clock . [SEP]
    logits = torch.full((2, 4, 256), -20.0)
    boxes = torch.full((2, 4, 4), 0.5)  # (cx, cy, w, h) relative to the frame
    logits[0, 0, [4, 5]], boxes[0, 0] = 3.0, torch.tensor([0.5, 0.5, 0.5, 0.5])           # street sign
    logits[0, 1, [1, 2]], boxes[0, 1] = 1.0, torch.tensor([0.875, 0.5, 0.5, 0.25])        # red car, crosses x=W
    logits[0, 2, [1, 2]], boxes[0, 2] = 2.0, torch.tensor([0.875, 0.5, 0.5, 0.25])        # same box, better score
    logits[0, 3, 1] = -2.0                                                                 # below the box threshold
    logits[1, 0, 1], boxes[1, 0] = 0.5, torch.tensor([0.25, 0.75, 0.25, 0.125])           # clock
    outputs = GroundingDinoObjectDetectionOutput(logits=logits, pred_boxes=boxes, input_ids=input_ids)

    assert_same(gdino.to_detections(outputs, input_ids, frames, phrases), [
        [((32, 20, 96, 60), sigmoid(3.0), "street sign"), ((80, 30, 128, 50), sigmoid(2.0), "red car")],
        [((6, 66, 18, 78), sigmoid(0.5), "clock")],
    ])


def test_owlv2_input_is_the_frame_padded_bottom_right_to_a_square(tiny_models):
    owl = make(tiny_models, "owlv2")
    wide = owl.processor(images=[Image.new("RGB", (128, 64), "white")], text=[["cat"]],
                         return_tensors="pt").pixel_values[0, 0]
    tall = owl.processor(images=[Image.new("RGB", (64, 128), "white")], text=[["cat"]],
                         return_tensors="pt").pixel_values[0, 0]
    white, padding = wide[0, 0], wide[-1, -1]

    assert white > padding
    assert (wide[:31] == white).all() and (wide[33:] == padding).all()  # rows 31-32: the resize's blur
    assert (tall[:, :31] == white).all() and (tall[:, 33:] == padding).all()


def test_owlv2_maps_boxes_through_the_square_and_ignores_blank_queries(tiny_models):
    owl = make(tiny_models, "owlv2", box_threshold=0.3)
    frames = [Image.new("RGB", (128, 64)), Image.new("RGB", (48, 96))]
    phrases = [["cat"], ["dog", "bird"]]  # the first frame's second query is the processor's blank padding
    logits = torch.full((2, 4, 2), -9.0)
    boxes = torch.full((2, 4, 4), 0.5)  # (cx, cy, w, h) relative to the padded square
    logits[0, 0], boxes[0, 0] = torch.tensor([2.0, 9.0]), torch.tensor([0.5, 0.25, 0.5, 0.25])
    logits[0, 1, 0], boxes[0, 1] = 3.0, torch.tensor([0.5, 0.75, 0.25, 0.25])    # all in the bottom padding
    logits[0, 2, 0], boxes[0, 2] = 1.0, torch.tensor([0.25, 0.5, 0.25, 0.25])    # half in the padding
    logits[1, 0, 1], boxes[1, 0] = 2.0, torch.tensor([0.25, 0.5, 0.25, 0.25])
    logits[1, 1, 0], boxes[1, 1] = 5.0, torch.tensor([0.75, 0.5, 0.5, 0.5])      # all in the right padding
    outputs = Owlv2ObjectDetectionOutput(logits=logits, pred_boxes=boxes)

    assert_same(owl.to_detections(outputs, frames, phrases), [
        [((32, 16, 96, 48), sigmoid(2.0), "cat"), ((16, 48, 48, 64), sigmoid(1.0), "cat")],
        [((12, 36, 36, 60), sigmoid(2.0), "bird")],
    ])


def test_yolo_letterbox_centres_the_frame_and_maps_boxes_back_exactly():
    grey = 114 / 255
    wide = letterbox([Image.new("RGB", (128, 64), "white")], 64)[0, 0]
    tall = letterbox([Image.new("RGB", (64, 128), "white")], 64)[0, 0]

    assert (wide[16:48] == 1.0).all() and (wide[:16] == grey).all() and (wide[48:] == grey).all()
    assert (tall[:, 16:48] == 1.0).all() and (tall[:, :16] == grey).all() and (tall[:, 48:] == grey).all()
    assert unletterbox([[8, 20, 24, 36], [0, 10, 64, 30]], 64, (128, 64)).tolist() == [[16, 8, 48, 40], [0, 0, 128, 28]]
    assert unletterbox([[20, 8, 36, 24], [10, 0, 30, 64]], 64, (64, 128)).tolist() == [[8, 16, 40, 48], [0, 0, 28, 128]]


@pytest.mark.parametrize("backend", ["yolo-world", "yoloe"])
def test_yolo_maps_head_output_to_frame_pixels_and_each_frames_own_phrases(tiny_models, backend):
    yolo = make(tiny_models, backend, box_threshold=0.3)
    frames = [Image.new("RGB", (128, 64)), Image.new("RGB", (64, 128))]
    raw = torch.zeros(2, 6, 8)  # (x, y, w, h in letterboxed pixels, score of cat, score of dog) per anchor
    raw[0, :, 0] = torch.tensor([16, 28, 16, 16, 0.9, 0.0])
    raw[0, :, 1] = torch.tensor([40, 40, 8, 8, 0.0, 0.95])   # a dog, not asked for in this frame
    raw[0, :, 2] = torch.tensor([32, 12, 16, 8, 0.8, 0.0])   # all in the top border
    raw[1, :, 0] = torch.tensor([28, 16, 16, 16, 0.0, 0.7])
    raw[1, :, 1] = torch.tensor([40, 40, 8, 8, 0.9, 0.0])    # a cat, not asked for in this frame

    assert_same(yolo.to_detections(raw, ["cat", "dog"], frames, [["cat"], ["dog"]]), [
        [((16, 8, 48, 40), 0.9, "cat")],
        [((8, 16, 40, 48), 0.7, "dog")],
    ])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_model_path_is_one_clear_error_line(tmp_path, backend):
    missing = tmp_path / ("missing.pt" if backend.startswith("yolo") else "missing")
    with pytest.raises(DetectorError) as error:
        detector(DetectorConfig(backend=backend, model=str(missing)))

    message = str(error.value)
    assert "\n" not in message and str(missing) in message and "detector.model" in message


def test_yolo_phrase_without_an_embedding_is_a_clear_error(tiny_models):
    yolo = make(tiny_models, "yolo-world")
    with pytest.raises(DetectorError, match=r"\['zebra'\] have no embedding in detector.text_embeddings"):
        yolo.detect([(Image.new("RGB", (64, 64)), ["cat", "zebra"])])


def test_loading_the_yolo_backend_keeps_pil_errors_for_files_that_are_not_images(tmp_path):
    import PIL.Image

    import mmcof_gen.models.yolo_world  # noqa: F401  (imports ultralytics, which patches PIL.Image.open)

    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("just text")
    with pytest.raises(PIL.UnidentifiedImageError):
        PIL.Image.open(not_an_image)
