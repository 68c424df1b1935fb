"""OWLv2 through transformers (`google/owlv2-base-patch16-ensemble`, ... or a local folder).

OWLv2's processor pads each frame to a square (bottom and right) before resizing it, so the
predicted boxes are relative to that square: they are scaled with a square target size
(max(W, H), max(W, H)) and then clipped to the frame, which drops what lies in the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from mmcof_gen.models.detector import TransformersDetector, finish
from mmcof_gen.schema import Detection


class Owlv2Detector(TransformersDetector):
    model_class = "Owlv2ForObjectDetection"
    example = "google/owlv2-base-patch16-ensemble"

    def detect_batch(self, frames: list[Image.Image], phrases: list[list[str]]) -> list[list[Detection]]:
        inputs = self.processor(images=frames, text=phrases, truncation=True, return_tensors="pt")
        return self.to_detections(self.forward(inputs), frames, phrases)

    def to_detections(self, outputs, frames: Sequence[Image.Image],
                      phrases: Sequence[Sequence[str]]) -> list[list[Detection]]:
        """Model outputs of a batch -> detections per frame, boxes in that frame's pixels.

        Frames with fewer phrases than the longest query list are padded with blank queries by the
        processor; their logits are masked here so that a blank query never wins a box.
        """
        logits = outputs.logits.clone()
        for row, frame_phrases in enumerate(phrases):
            logits[row, :, len(frame_phrases):] = float("-inf")
        sides = [max(frame.size) for frame in frames]
        processed = self.processor.post_process_grounded_object_detection(
            type(outputs)(logits=logits, pred_boxes=outputs.pred_boxes), threshold=self.config.box_threshold, target_sizes=[(side, side) for side in sides])
        return [finish(result["boxes"], result["scores"], [frame_phrases[i] for i in result["labels"].tolist()],
                       frame.size, self.config)
                for result, frame, frame_phrases in zip(processed, frames, phrases)]
