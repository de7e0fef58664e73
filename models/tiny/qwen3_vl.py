"""Tiny random-weight twins of Qwen/Qwen3-VL-8B-Instruct (`qwen3-vl`) and
Qwen/Qwen3-VL-30B-A3B-Thinking (`qwen3-vl-moe-thinking`), built offline and deterministically.

They keep everything but size: the model types and classes (qwen3_vl, and qwen3_vl_moe with
its routed experts), Qwen3VLProcessor with the real image and video processor values (16 px
patches, 2 x 2 merge, temporal patch 2, 65,536 to 16,777,216 pixels per image, mean and std
0.5), a Qwen2Tokenizer with Qwen's special tokens and <think> / </think> as plain added
tokens, the chat format (the Thinking template opens <think> in the generation prompt), the
generation configs' stop tokens and sampling defaults, interleaved M-RoPE and DeepStack. Only
widths, depths and the vocabulary are small (about 1 MB). Their answers are noise. Sources of
each fact: models/tiny/README.md.
"""
from __future__ import annotations

import json
from pathlib import Path

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
THINK_TOKENS = ["<think>", "</think>"]  # added tokens, not special: decoding keeps them in the text

BPE_VOCAB_SIZE = 600  # 256 byte symbols + merges learned from CORPUS
VOCAB_MULTIPLE = 64  # real Qwen pads lm_head past the tokenizer: keep that case exercised
SEED = 0

# Text the tokenizer is trained on: JSON answers as the schemas shape them, and prompt words.
CORPUS = [
    '{"bbox_2d":[12,345,678,910]}', '{"bbox_2d": [0, 1000, 250, 500]}',
    '{"score":7}', '{"score": 10}', '{"winner":"A"}', '{"winner": "B"}',
    "0 1 2 3 4 5 6 7 8 9 10 25 50 100 250 500 750 1000 [ ] { } : , \" ' . ? ! - ( )",
    "```json ``` <think> </think> bbox_2d bbox box score winner image mask red candidate",
    "Find the object the query refers to and answer with its bounding box as JSON.",
    "Coordinates are integers on a 0 to 1000 grid relative to the image width and height.",
    "Think about what the object is used for, its function, its parts and the whole object,",
    "the context and location in the scene, left right top bottom middle near far behind.",
    "Rate how well the red mask covers the object described by the query from 0 to 10.",
    "Which of the two images, A or B, shows the red mask that better matches the query?",
    "the thing you would use to cut the bread, the person holding an umbrella, a cup on a table",
    "You are a careful visual assistant. Answer only with JSON. Query: user assistant system",
]

# Qwen's format; a message's content is a string or a list of {"type": "image"|"text"} parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
# The Thinking checkpoints' template opens the reasoning block for the model.
THINKING_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant\\n<think>\\n'")
# Sampling defaults the checkpoints ship (the adapters override them: greedy, or their own sampler)
INSTRUCT_SAMPLING = {"do_sample": True, "top_k": 20, "top_p": 0.8, "temperature": 0.7}
THINKING_SAMPLING = {"do_sample": True, "top_k": 20, "top_p": 0.95, "temperature": 1.0}


def build(out_dir: Path) -> None:
    """The Instruct twin: dense qwen3_vl."""
    _build(Path(out_dir), moe=False, thinking=False)


def build_moe_thinking(out_dir: Path) -> None:
    """The Thinking MoE twin: qwen3_vl_moe, whose dense class would load it with random MLPs."""
    _build(Path(out_dir), moe=True, thinking=True)


# The random twins' widths and depths; the trained demo twins (models/trained) are wider and deeper.
SIZES = {"width": 64, "layers": 2, "heads": 4, "kv_heads": 2, "vision_width": 32, "vision_depth": 2}


def _build(out_dir: Path, moe: bool, thinking: bool, sizes: dict = SIZES, corpus: list[str] = CORPUS,
           bpe_vocab_size: int = BPE_VOCAB_SIZE) -> None:
    import torch
    from transformers import (GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLMoeConfig,
                              Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor)
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tokenizer = _train_tokenizer(corpus, bpe_vocab_size)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    # Qwen3-VL's processor values: 16 px patches, 2 x 2 merge (32 px per image token)
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2,
        size={"shortest_edge": 65536, "longest_edge": 16777216},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    video_processor = Qwen3VLVideoProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2,
        size={"shortest_edge": 4096, "longest_edge": 25165824})
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                                 chat_template=THINKING_CHAT_TEMPLATE if thinking else CHAT_TEMPLATE)

    head_dim = sizes["width"] // sizes["heads"]
    text = dict(vocab_size=vocab_size, hidden_size=sizes["width"], intermediate_size=2 * sizes["width"],
                num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"],
                num_key_value_heads=sizes["kv_heads"], head_dim=head_dim, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,  # Qwen's 3:1:1 split of head_dim / 2
                                 "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8],
                                 "mrope_interleaved": True},
                pad_token_id=ids[END_OF_TEXT])
    if moe:  # every layer routed, 2 of 4 experts per token (the real model: 8 of 128)
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                    mlp_only_layers=[])
    config_class, model_class = ((Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration) if moe
                                 else (Qwen3VLConfig, Qwen3VLForConditionalGeneration))
    config = config_class(
        text_config=text,
        vision_config=dict(
            depth=sizes["vision_depth"], hidden_size=sizes["vision_width"], intermediate_size=2 * sizes["vision_width"],
            num_heads=2, patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=sizes["width"],
            num_position_embeddings=64, deepstack_visual_indexes=[1]),
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START], vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=False)
    config.eos_token_id = ids[IM_END]
    config.pad_token_id = ids[END_OF_TEXT]

    with torch.random.fork_rng(devices=[]):  # seeded CPU weights without touching the caller's RNG state
        torch.manual_seed(SEED)
        model = model_class(config).eval()
    # A turn ends at <|im_end|>, <|endoftext|> also stops; the checkpoints ship sampling defaults.
    model.generation_config = GenerationConfig(
        eos_token_id=[ids[IM_END], ids[END_OF_TEXT]], pad_token_id=ids[END_OF_TEXT],
        repetition_penalty=1.0, **(THINKING_SAMPLING if thinking else INSTRUCT_SAMPLING))
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def _train_tokenizer(corpus: list[str], vocab_size: int):
    """Byte-level BPE with Qwen2's pre-tokenizer, trained on `corpus`; the specials come after the
    learned vocabulary, as in Qwen's tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]  # the learned vocab and merges
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"], merges=merges, unk_token=None, eos_token=IM_END, pad_token=END_OF_TEXT,
        extra_special_tokens=SPECIAL_TOKENS[1:], model_max_length=32768)
    tokenizer.add_tokens(THINK_TOKENS)
    return tokenizer
