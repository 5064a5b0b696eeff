"""The frozen Stable Diffusion 1.x adapter: everything that knows diffusers / transformers.

- `models`: `SDParts` and loading (diffusers folder, single `.safetensors`/`.ckpt`, presets);
- `tokenizer`: SD's CLIP tokenizer, built offline; `text`: prompt encoding with the
  embedding spliced in (A1111's 75-token chunks, clip skip);
- `embedding_paths`: embedding file names and suffixes, checked without torch;
- `embeddings`: the `Embedding`, creation from init text, and the A1111 / diffusers files;
- `generate`: images from prompts with an embedding (previews and evaluation);
- `names`: what an embedding name may be, and where it sits in a prompt;
- `torchfiles`: pickled `.pt` / `.bin` files, written for stock A1111 and read safely;
- `optimizer_state`: the `<file>.optim` beside an embedding, as A1111 writes and checks it;
- `pngembed`: A1111's PNG embeddings, an embedding carried inside an image;
- `telemetry`: each vector's norm against the vocabulary, cosine to its init, nearest tokens;
- `runtime`: how the frozen model runs here: device, weight dtype, autocast, checkpointing.
"""
