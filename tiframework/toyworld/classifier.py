"""Ground truth for generated images: a small CNN with one head per attribute group.

Trained on rendered images, half of them passed through the toy VAE (encode ->
decode), because generated images come out of that decoder, soft-edged.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from tiframework.errors import UserError
from tiframework.toyworld.batches import fit, to_tensor, world_batch
from tiframework.toyworld.characters import get_character
from tiframework.toyworld.world import GROUPS

WEIGHTS = Path(__file__).parent / "weights" / "classifier"


def _key(group: str) -> str:
    return group.replace(" ", "_")  # ModuleDict keys: no spaces needed, none allowed with dots


class AttributeNet(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans, chans[1:], strict=False):  # 64 -> 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * width * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({_key(g): nn.Linear(256, len(v)) for g, v in GROUPS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)  # x: (B, 3, 64, 64) in [-1, 1]
        return {g: self.heads[_key(g)](h) for g in GROUPS}


def _targets(attrs) -> dict[str, torch.Tensor]:
    labels = [a.visible() for a in attrs]
    return {g: torch.tensor([GROUPS[g].index(lab[g]) for lab in labels]) for g in GROUPS}


@torch.no_grad()
def _augment(x: torch.Tensor, vae, rng: random.Random) -> torch.Tensor:
    if vae is not None:
        half = x.shape[0] // 2
        x = torch.cat([vae.decode(vae.encode(x[:half]).latent_dist.sample()).sample.clamp(-1, 1), x[half:]])
    return x + 0.04 * rng.random() * torch.randn_like(x)


def train_classifier(seconds: float, seed: int, vae=None, batch: int = 64) -> tuple[AttributeNet, list[float]]:
    torch.manual_seed(seed)
    rng = random.Random(f"classifier:{seed}")
    net = AttributeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)

    def loss_fn(step: int) -> tuple[torch.Tensor, float]:
        # Held-out combinations included: the classifier must judge held-out characters.
        x, attrs = world_batch(rng, batch, exclude=())
        logits, targets = net(_augment(x, vae, rng)), _targets(attrs)
        loss = sum(F.cross_entropy(logits[g], targets[g]) for g in GROUPS)
        return loss, loss.item()

    return net.eval(), fit("classifier", seconds, opt, loss_fn)


@torch.no_grad()
def heldout_accuracy(net: AttributeNet, seed: int, n: int = 1024, vae=None) -> dict[str, float]:
    """Per-group accuracy on fresh images from a seed stream training never used."""
    rng = random.Random(f"classifier-eval:{seed}")
    x, attrs = world_batch(rng, n, exclude=())
    if vae is not None:
        x = torch.cat([vae.decode(vae.encode(c).latent_dist.sample()).sample.clamp(-1, 1) for c in x.split(128)])
    targets = _targets(attrs)
    preds = {g: [] for g in GROUPS}
    for chunk in x.split(256):
        for g, logit in net(chunk).items():
            preds[g].append(logit.argmax(-1))
    return {g: float((torch.cat(preds[g]) == targets[g]).float().mean()) for g in GROUPS}


def save_classifier(net: AttributeNet, folder: Path, extra: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"groups": GROUPS, **extra}, indent=1))


class AttributeClassifier:
    """`predict(images) -> [{group: value}]`, loaded from the committed weights."""

    def __init__(self, folder: Path = WEIGHTS):
        path = Path(folder) / "model.safetensors"
        if not path.is_file():
            raise UserError(f"{path}: attribute classifier missing; run `tiframework toyworld build`")
        self.net = AttributeNet()
        self.net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        self.net.eval()

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image]) -> list[dict[str, str]]:
        x = to_tensor([im.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC) for im in images])
        idx = {g: logit.argmax(-1).tolist() for g, logit in self.net(x).items()}
        return [{g: GROUPS[g][idx[g][i]] for g in GROUPS} for i in range(len(images))]


@functools.lru_cache(maxsize=1)
def default_classifier() -> AttributeClassifier:
    return AttributeClassifier()


def attribute_accuracy(images: Sequence[Image.Image], character: str,
                       classifier: AttributeClassifier | None = None) -> dict[str, float]:
    """Fraction of images showing each of the character's attributes, their `mean`, and
    `traits`: the mean over the attributes she has (absent accessories excluded, since
    "no hat" is true of most images anyway).

    Eye colour, glasses and emblem are only scored on images not predicted `from behind`
    (they cannot show there); the other groups on every image.
    """
    return attribute_scores(images, character, classifier)[0]


_HIDDEN_FROM_BEHIND = frozenset({"eye_color", "glasses", "emblem"})


def attribute_scores(images: Sequence[Image.Image], character: str,
                     classifier: AttributeClassifier | None = None) -> tuple[dict[str, float], list[float]]:
    """`attribute_accuracy`, plus each image's share of `traits`: per-image values whose
    mean is exactly `traits`, so their spread gives its standard error over the images.

    An image's share weights each trait group by 1 / (images scored on that group), so an
    image seen from behind (scored on fewer groups) carries its fair part of the mean.
    """
    char = get_character(character)
    expected = char.expected()
    preds = (classifier or default_classifier()).predict(images)
    pools = {g: [i for i, p in enumerate(preds) if not (g in _HIDDEN_FROM_BEHIND and p["view"] == "from behind")]
             for g in expected}
    scores: dict[str, float] = {}
    for group, want in expected.items():
        pool = pools[group]
        scores[group] = sum(preds[i][group] == want for i in pool) / len(pool) if pool else 0.0
    traits = char.trait_groups()
    scores["mean"] = sum(scores[g] for g in expected) / len(expected)
    scores["traits"] = sum(scores[g] for g in traits) / len(traits)
    # traits = (1/G) sum_g (1/|pool_g|) sum_{i in pool_g} hit_ig = (1/n) sum_i share_i
    n = len(preds)
    share = [0.0] * n
    for g in traits:
        for i in pools[g]:
            share[i] += n * (preds[i][g] == expected[g]) / (len(traits) * len(pools[g]))
    return scores, share
