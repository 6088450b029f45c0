"""Verifiable question generation from boxes: every answer follows from the annotations (or is flagged).

- ``objects``   annotated images (boxes.jsonl layout or COCO json) with per-label exhaustiveness
- ``templates`` spatial relation, counting, referring expressions ("the doll", "the leftmost car")
- ``colour``    dominant colour inside a box, classified in CIELAB/LCh, with a confidence
- ``choices``   multiple-choice options with distractors from the same answer vocabulary
- ``ocr_questions`` "What is written ...?" questions over OCR lines

Sources (``questions``, ``synthetic``, ``ocr_docs``, ``detector``) turn these into Sample rows; the
stages in ``ergo_data.stages.questions`` (``question_dedup``, ``multiple_choice``, ``box_agreement``)
work on rows from any source.
"""
