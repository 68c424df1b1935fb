"""The verifier's rule about a box: what the verifier, who knows where the target is, tells the planner.

The rules of an answer against the ground truth are a foundation (`mmcof_gen/answers.py`); open answers
they reject can go on to an LLM judge (`models.verifier`), asked by the VLM agent (agent/vlm_search.py).
"""

from __future__ import annotations

from mmcof_gen.imaging import box_area, overlap_area
from mmcof_gen.schema import Box


def box_hint(box: Box, target: Box) -> str:
    """What the verifier, who knows where the target is (frame pixels), tells the planner about a box whose
    reading was wrong; it points the search without giving the answer away."""
    shared = overlap_area(box, target)
    if shared == 0:
        return "wrong object: the target is not in this box"
    if shared < 0.9 * box_area(target):
        return "enlarge the box: it cuts off part of the target"
    if box_area(target) < 0.1 * box_area(box):
        return "shrink the box: the target is only a small part of it"
    return "the box holds the target; zoom in and read it closely"
