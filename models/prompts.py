"""Prompts and answer schemas of the planner and judge roles, shared by every VLM backend.

Pure Python on purpose: the transformers, vLLM and OpenAI backends all build the same chat
messages (the OpenAI / Hugging Face list-of-dicts format, images as {"type": "image"} parts in
the order the backend must supply them) and constrain answers with the same JSON schemas.
"""
from __future__ import annotations

# Qwen3-VL's native box format: integers on a 0..1000 grid relative to the image width/height.
GRID = 1000

PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "bbox_2d": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": GRID},
            "minItems": 4,
            "maxItems": 4,
        },
    },
    "required": ["bbox_2d"],
    "additionalProperties": False,
}

RATE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 10}},
    "required": ["score"],
    "additionalProperties": False,
}

DUEL_SCHEMA = {
    "type": "object",
    "properties": {"winner": {"type": "string", "enum": ["A", "B"]}},
    "required": ["winner"],
    "additionalProperties": False,
}

# Planner strategies in their fixed order: hypothesis k uses STRATEGIES[k % len]. Each one
# steers the planner to a different reading of the query, which diversifies the N boxes more
# than temperature alone.
STRATEGIES: dict[str, str] = {
    "direct": "Locate the object the query refers to.",
    "function": "First think about what the query asks for: which object serves that purpose or "
                "function? Then locate that object.",
    "part_whole": "Decide whether the query means a whole object or only a part of one, and locate "
                  "exactly that extent: the part alone, or the whole object.",
    "context": "Use the scene context and spatial relations (left, right, near, behind, on top) to "
               "pick the right instance among similar objects, then locate it.",
    "attributes": "Match the query's attributes (colour, size, material, state) against every "
                  "candidate object, then locate the best match.",
    "tight": "Locate the object and draw the tightest box that contains all of it and nothing else.",
}

BOX_FORMAT = (f'Answer only with JSON: {{"bbox_2d": [x1, y1, x2, y2]}}, integer coordinates on a '
              f"0 to {GRID} grid relative to the image width and height (top left is 0, 0).")


def plan_messages(query: str, strategy: str) -> list[dict]:
    """One image (the photo), then the query, the answer format and the strategy's instruction."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown planner strategy {strategy!r}; choose from {list(STRATEGIES)}.")
    return plan_conversation(query, STRATEGIES[strategy])


def plan_conversation(query: str, instruction: str) -> list[dict]:
    """The instruction comes last: what a sample's N prompts share (image, query, format) is then
    one prefix, prefilled once per sample (models/shared_prefix.py, vLLM's prefix caching)."""
    text = f"Query: {query}\n{BOX_FORMAT}\n{instruction}"
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def rate_messages(query: str) -> list[dict]:
    """One image: the photo with a candidate mask drawn in red."""
    text = (f"Query: {query}\nThe image shows a candidate segmentation mask drawn in red. Rate how "
            "well the red mask covers exactly the object the query refers to, from 0 (wrong object "
            'or empty) to 10 (exactly that object, complete and tight). Answer only with JSON: '
            '{"score": <integer 0-10>}.')
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def duel_messages(query: str) -> list[dict]:
    """Two images, A then B: the same photo, each with a different candidate mask in red."""
    text = (f"Query: {query}\nImage A and image B show two candidate segmentation masks drawn in "
            "red on the same photo. Which mask matches the object the query refers to better? "
            'Answer only with JSON: {"winner": "A"} or {"winner": "B"}.')
    content = [{"type": "text", "text": "Image A:"}, {"type": "image"},
               {"type": "text", "text": "Image B:"}, {"type": "image"},
               {"type": "text", "text": text}]
    return [{"role": "user", "content": content}]
