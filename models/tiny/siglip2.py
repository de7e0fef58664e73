"""A tiny random-weight SigLIP2 (`Siglip2Model` + `Siglip2Processor`), built offline.

Same classes and file layout as a real `google/siglip2-*` NaFlex checkpoint, scaled down:
width-32 two-layer text and vision towers, 16 px patches, at most 64 patches per image, and a
small lower-casing BPE tokenizer with Gemma's special tokens, trained on the word list below
(no download). About 0.3 MB; random weights, so its scores are arbitrary but deterministic.
"""
from __future__ import annotations

from pathlib import Path

HIDDEN = 32
PATCH_SIZE = 16
MAX_NUM_PATCHES = 64
TEXT_LENGTH = 64  # SigLIP2 text is padded / truncated to 64 tokens
BPE_VOCAB_SIZE = 600

# Gemma's special tokens, in Gemma's id order (pad 0, eos 1, bos 2, unk 3, mask 4).
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
# Gemma falls back to bytes for characters outside its vocabulary; so does this tokenizer.
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

CORPUS = """
a photo of the thing you would use to cut the bread on the kitchen table
the person who is holding an umbrella in the rain next to the red car
which object in the picture can be used to keep food cold
the animal that is sleeping on the sofa near the window
something you could sit on while waiting for the bus at the station
the tallest building in the city skyline behind the bridge
the part of the bicycle that the rider holds to steer
a dog a cat a horse a bird a cow a sheep an elephant a bear a zebra a giraffe
a man a woman a child a boy a girl a baby people player chef doctor driver
chair table bed sofa couch desk shelf door window wall floor roof lamp light
cup glass bottle plate bowl knife fork spoon pan pot oven stove sink fridge
car bus truck train boat plane bicycle motorcycle wheel road street sign
phone laptop keyboard mouse screen television remote clock book paper pen
apple banana orange pizza cake sandwich carrot broccoli bread cheese egg
tree flower grass plant leaf garden park field mountain river lake sea sky
red green blue yellow black white brown gray pink purple orange dark bright
left right top bottom front back middle center near far above below under over
big small large little long short tall wide narrow round square soft hard
first second third last other only most best biggest smallest closest
used to eat drink cook clean write read play sleep wear carry open close
what where which who why how is are was were be can could would should
this that these those it its his her their my your our one two three many
with without from into onto through between behind beside inside outside
"""


def _train_tokenizer():
    """A BPE trained on CORPUS with the normalisation SigLIP2's tokenizer applies (lower-case,
    spaces as "▁"), wrapped in the tokenizer class `Siglip2Processor` loads."""
    import json

    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import Siglip2Tokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, special_tokens=SPECIAL_TOKENS + BYTE_TOKENS, show_progress=False
    )
    lines = [line.strip() for line in CORPUS.strip().splitlines()]
    bpe.train_from_iterator(lines, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]  # the vocab and merges a Siglip2Tokenizer is made of
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return Siglip2Tokenizer(vocab=trained["vocab"], merges=merges, model_max_length=TEXT_LENGTH)


def build(out_dir: Path) -> None:
    import torch
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    tokenizer = _train_tokenizer()
    towers = {"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = Siglip2Config(
        text_config={
            **towers,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": TEXT_LENGTH,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={**towers, "patch_size": PATCH_SIZE, "num_patches": MAX_NUM_PATCHES},
    )
    torch.manual_seed(0)
    Siglip2Model(config).eval().save_pretrained(out_dir)

    image_processor = Siglip2ImageProcessor(patch_size=PATCH_SIZE, max_num_patches=MAX_NUM_PATCHES)
    Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
