"""GroundingDINO through transformers (`IDEA-Research/grounding-dino-tiny`, `-base`, or a local folder).

This is the model of the groundingdino-py package (same architecture, the authors' released weights
converted); groundingdino-py itself needs transformers < 5 and a checkpoint from the net, so it
cannot share an environment with the chat backends.

The phrases of one frame become one prompt, "red car. street sign.", as the model was trained. A
batch of frames is padded to one tensor (bottom/right, with a pixel mask); predicted boxes are
relative to each frame's own unpadded size, so the processor's post-processing with the frame's
(height, width) gives frame pixels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from PIL import Image

from mmcof_gen.models.detector import TransformersDetector, finish
from mmcof_gen.schema import Detection


def prompt(phrases: Sequence[str]) -> str:
    """GroundingDINO's prompt form: lower case, each phrase ended by a period."""
    return " ".join(p.lower().rstrip(".") + "." for p in phrases)


class GroundingDinoDetector(TransformersDetector):
    model_class = "AutoModelForZeroShotObjectDetection"
    example = "IDEA-Research/grounding-dino-tiny"

    def detect_batch(self, frames: list[Image.Image], phrases: list[list[str]]) -> list[list[Detection]]:
        inputs = self.processor(images=frames, text=[prompt(p) for p in phrases], padding=True, truncation=True,
                                return_tensors="pt")
        return self.to_detections(self.forward(inputs), inputs.input_ids, frames, phrases)

    def to_detections(self, outputs, input_ids, frames: Sequence[Image.Image],
                      phrases: Sequence[Sequence[str]]) -> list[list[Detection]]:
        """Model outputs of a batch -> detections per frame, boxes in that frame's pixels."""
        processed = self.processor.post_process_grounded_object_detection(
            outputs, input_ids, threshold=self.config.box_threshold, text_threshold=self.config.text_threshold,
            target_sizes=[(frame.height, frame.width) for frame in frames])
        found = []
        for result, frame, frame_phrases in zip(processed, frames, phrases):
            labels = [self.phrase_of(text, frame_phrases) for text in result["text_labels"]]
            found.append(finish(result["boxes"], result["scores"], labels, frame.size, self.config))
        return found

    def phrase_of(self, text_label: str, phrases: Sequence[str]) -> str:
        """The caller's phrase that a decoded label belongs to: the one sharing most words with it.

        The post-processing decodes the prompt tokens that scored above the text threshold ("car.",
        "red car [SEP]"); the agent wants its own phrase back. Ties (no shared word) go to the first.
        """
        for special in self.processor.tokenizer.all_special_tokens:
            text_label = text_label.replace(special, " ")
        words = set(re.findall(r"\w+", text_label.lower()))
        return max(phrases, key=lambda p: len(words & set(re.findall(r"\w+", p.lower()))))
