"""The frozen Stable Diffusion 1.x adapter: everything that knows diffusers / transformers.

- `models`: `SDParts` and loading (diffusers folder, single `.safetensors`/`.ckpt`, presets);
- `tokenizer`: SD's CLIP tokenizer, built offline; `text`: prompt encoding with the
  embedding spliced in (A1111's 75-token chunks, clip skip);
- `embeddings`: the `Embedding`, creation from init text, and the A1111 / diffusers files;
- `generate`: images from prompts with an embedding (previews and evaluation).
"""
