"""A tiny random-weight twin of `google/siglip2-giant-opt-patch16-384`, built offline.

The fixed-resolution SigLIP2 checkpoints are published in SigLIP's architecture: `model_type`
siglip, `SiglipModel`, `SiglipProcessor` = `SiglipImageProcessor` (a fixed 384 x 384 resize,
bilinear, mean and std 0.5) + `GemmaTokenizer` (pad 0, eos 1, bos 2, unk 3, byte fallback, no
lower-casing: the scorer lower-cases queries itself), text padded to 64 tokens. The twin keeps
all of that and the 16 px patches at 384 px (576 patches), and shrinks only the towers (width
32, two layers) and the vocabulary (a BPE trained on the word list below). About 0.3 MB; random
weights, so its scores are arbitrary but deterministic. See models/tiny/README.md.
"""
from __future__ import annotations

from pathlib import Path

HIDDEN = 32
PATCH_SIZE = 16
IMAGE_SIZE = 384
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


def _train_tokenizer(extra_lines: tuple[str, ...] = ()):
    """A BPE trained on CORPUS with Gemma's normalisation (spaces as "▁"), wrapped in the
    tokenizer class the real checkpoint names (`GemmaTokenizer`)."""
    import json

    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import GemmaTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Sequence([normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, special_tokens=SPECIAL_TOKENS + BYTE_TOKENS, show_progress=False
    )
    lines = [line.strip() for line in CORPUS.strip().splitlines()] + list(extra_lines)
    lines += [line.capitalize() for line in lines]  # cased text, as Gemma's vocabulary has
    bpe.train_from_iterator(lines, trainer=trainer)
    trained = json.loads(bpe.to_str())["model"]  # the vocab and merges a Siglip2Tokenizer is made of
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return GemmaTokenizer(vocab=trained["vocab"], merges=merges, model_max_length=TEXT_LENGTH)


def build(out_dir: Path, hidden: int = HIDDEN, extra_lines: tuple[str, ...] = (),
          image_size: int = IMAGE_SIZE) -> None:
    """The random twin; the trained demo scorer (models/trained) is built wider and for smaller
    images, its tokenizer also trained on the demo world's queries (`extra_lines`)."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer = _train_tokenizer(extra_lines)
    towers = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = SiglipConfig(
        text_config={
            **towers,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": TEXT_LENGTH,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={**towers, "patch_size": PATCH_SIZE, "image_size": image_size},
    )
    torch.manual_seed(0)
    SiglipModel(config).eval().save_pretrained(out_dir)

    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=2,
                                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
