"""Population training: each member ends where it would have ended training alone.

Tolerance: members share batched text-encoder and UNet calls, and CPU kernels round
differently at different batch sizes, so vectors agree to float32 rounding, not bit for
bit. Measured on the tiny preset and the toy world after 3-4 steps: max |diff| 0 to
7.5e-7 per member (entries ~0.1). AdamW turns a gradient into a step of about the
learning rate whatever its last bits, so rounding does not grow much within a few
steps; TOL = 1e-5 is 13x the largest difference seen and 500x below one step's move at
the smallest rate used here (0.005). The equivalence tests also check that what a wrong
data stream would give (another seed's vectors) is far above TOL.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from runs import make_dataset, make_masked_dataset
from runs import shrunk_quickstart as config
from tiframework.errors import UserError
from tiframework.sd.embeddings import load_embedding
from tiframework.training.population import module as population_module
from tiframework.training.population.module import Amp, MemberCallback, amp_for
from tiframework.training.population.train import open_member, plan_member, train_population
from tiframework.training.train import train

TOL = 1e-5
LONG_CAPTION = ", ".join(f"{c} {t}" for c in ("red", "blue", "green", "pink", "black", "white", "grey", "gold")
                         for t in ("ribbon", "bow", "flower", "star", "shoes"))  # > 75 tokens: two chunks


def vectors(summary: dict) -> torch.Tensor:
    return load_embedding(summary["embedding"]).vectors


def metrics(summary: dict) -> list[dict[str, str]]:
    with open(Path(summary["run_dir"]) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def solo(tmp_path: Path, parts, overrides: list[str], run_id: str) -> dict:
    return train(config(tmp_path, *overrides, f"logging.run_id={run_id}-solo"), parts=parts)


def assert_like_solo(pop: dict, alone: dict) -> None:
    assert pop["final_step"] == alone["final_step"]
    diff = (vectors(pop) - vectors(alone)).abs().max().item()
    assert diff <= TOL, f"{pop['run_dir']}: max |diff| {diff:.3g} from training alone"
    rows, solo_rows = metrics(pop), metrics(alone)
    assert [r["step"] for r in rows] == [r["step"] for r in solo_rows]
    for r, s in zip(rows, solo_rows, strict=True):
        assert r["lr"] == s["lr"]
        assert float(r["loss"]) == pytest.approx(float(s["loss"]), rel=1e-4)  # same samples, same noise


# Three members that differ in everything a member owns: seed, VPT, name, init text,
# learning-rate schedule, batch size, accumulation, step count, latent sampling, tag
# dropout, gradient clipping, weight decay, and (member c) a dataset whose captions need two
# 77-token chunks.
def tiny_members(tmp_path: Path) -> dict[str, list[str]]:
    long = make_dataset(tmp_path / "long", n=4, caption=LONG_CAPTION)
    return {
        "a": ["training.seed=0"],
        "b": ["training.seed=1", "embedding.vectors_per_token=2", "embedding.name=bee_ti",
              "training.learning_rate=0.05:2, 0.01", "training.batch_size=2", "training.accumulate=2",
              "training.grad_clip=norm", "training.grad_clip_value=0.001"],
        "c": ["training.seed=2", "embedding.vectors_per_token=6", "embedding.init_text=red hair",
              "training.learning_rate=0.005", "training.lr_scheduler=cosine_restarts", "training.cosine_cycle_steps=2",
              "training.weight_decay=0.01", "training.accumulate=3", "training.max_steps=3",
              "data.latent_sampling=random", "data.tag_dropout=0.2", f"data.path={long}"],
    }


def test_members_match_training_alone_on_tiny(tmp_path, tiny_parts):
    members = tiny_members(tmp_path)
    cfgs = [config(tmp_path, *o, f"logging.run_id={k}") for k, o in members.items()]
    pop = train_population(cfgs, parts=tiny_parts)
    alone = {k: solo(tmp_path, tiny_parts, o, k) for k, o in members.items()}
    for summary, key in zip(pop, members, strict=True):
        assert_like_solo(summary, alone[key])
    assert [s["final_step"] for s in pop] == [4, 4, 3]
    # The tolerance is far below what a wrong stream would give: a's vectors vs another seed's.
    other = solo(tmp_path, tiny_parts, ["training.seed=5"], "a-seed5")
    assert (vectors(pop[0]) - vectors(other)).abs().max().item() > 1000 * TOL

    # Shared passes of at most 2 samples (activation memory bounded) change nothing either.
    split = train_population([config(tmp_path, *o, f"logging.run_id={k}-split") for k, o in members.items()],
                             parts=tiny_parts, max_samples=2)
    for summary, key in zip(split, members, strict=True):
        assert_like_solo(summary, alone[key])


def test_members_with_the_training_options_match_training_alone(tmp_path, tiny_parts):
    # Every loss and regulariser option in one of three members (issue 23): each is applied by
    # the one `training.loss` / `training.regularise` code in both stacks, so a member still ends
    # where it would alone; the EMA member's saved file is its EMA.
    masked = make_masked_dataset(tmp_path / "masked")  # alpha channels and mask files
    members = {
        "snr": ["training.seed=0", "training.loss_weighting=min_snr", "training.loss_type=huber",
                "training.noise_offset=0.1", "embedding.norm_control=project"],
        "deb": ["training.seed=1", "training.loss_weighting=debiased", "training.loss_type=smooth_l1",
                "embedding.norm_control=decay", "training.ema_decay=0.5", "training.ema_warmup=1",
                "embedding.init=random", "training.accumulate=2"],
        "p2": ["training.seed=2", "training.loss_weighting=p2", "embedding.norm_control=init_l2",
               "embedding.init_l2_weight=1.0", "embedding.init=zeros", f"data.path={masked}",
               "training.masked_loss=auto", "training.unmasked_weight=0.2"],
    }
    cfgs = [config(tmp_path, *o, f"logging.run_id={k}") for k, o in members.items()]
    pop = train_population(cfgs, parts=tiny_parts)
    for summary, (key, o) in zip(pop, members.items(), strict=True):
        assert_like_solo(summary, solo(tmp_path, tiny_parts, o, key))
    # The options act: without them member snr trains elsewhere, and projection holds its norm.
    plain = solo(tmp_path, tiny_parts, ["training.seed=0"], "plain")
    assert (vectors(pop[0]) - vectors(plain)).abs().max().item() > 1000 * TOL
    median = float(tiny_parts.text_encoder.get_input_embeddings().weight.float().norm(dim=1).median())
    torch.testing.assert_close(vectors(pop[0]).norm(dim=1), torch.full((4,), median))
    # The masks act: member p2 without them has another loss from its first step on.
    no_mask = solo(tmp_path, tiny_parts, [*members["p2"], "training.masked_loss=none"], "p2-unmasked")
    assert metrics(no_mask)[0]["loss"] != metrics(pop[2])[0]["loss"]


@pytest.mark.slow
def test_members_match_training_alone_on_toyworld(tmp_path):
    world = ["model.preset=toyworld", "data.path=toyworld:kiri?pruned=1", "training.max_steps=3"]
    members = {
        "a": ["training.seed=0"],  # the quickstart: VPT 4, lr 0.02, batch 4
        "b": ["training.seed=1", "embedding.vectors_per_token=2", "training.learning_rate=0.05:2, 0.01",
              "training.batch_size=2", "training.accumulate=2", "data.path=toyworld:kiri"],  # unpruned captions
        "c": ["training.seed=2", "embedding.vectors_per_token=8", "embedding.init_text=pink hair, green dress",
              "training.learning_rate=0.005", "training.batch_size=1", "training.accumulate=3",
              "model.clip_skip=2"],
    }
    from tiframework.sd.models import load_model

    parts = load_model(config(tmp_path, *world).model)
    pop = train_population([config(tmp_path, *world, *o, f"logging.run_id={k}") for k, o in members.items()],
                           parts=parts)
    for summary, (key, o) in zip(pop, members.items(), strict=True):
        assert_like_solo(summary, solo(tmp_path, parts, [*world, *o], key))
    other = solo(tmp_path, parts, [*world, "training.seed=7"], "a-seed7")
    assert (vectors(pop[0]) - vectors(other)).abs().max().item() > 1000 * TOL


def test_member_outputs_are_a_run_folder(tmp_path, tiny_parts):
    cfgs = [config(tmp_path, "training.save_every=2", "logging.run_id=x"),
            config(tmp_path, "training.save_every=3", "training.max_steps=4", "logging.run_id=y")]
    x, y = train_population(cfgs, parts=tiny_parts)
    alone = train(config(tmp_path, "training.save_every=2", "logging.run_id=x-solo"), parts=tiny_parts)
    assert set(x) == set(alone)  # the summary a solo run without evaluation writes
    assert json.loads((Path(x["run_dir"]) / "summary.json").read_text()) == x
    run = Path(x["run_dir"])
    assert (run / "config.yaml").is_file()
    names = sorted(p.name for p in (run / "embeddings").iterdir())
    assert names == sorted(p.name for p in (Path(alone["run_dir"]) / "embeddings").iterdir())
    assert names == ["kiri_ti-2.pt", "kiri_ti-2.pt.optim", "kiri_ti-2.safetensors", "kiri_ti-4.pt",
                     "kiri_ti-4.pt.optim", "kiri_ti-4.safetensors", "kiri_ti.pt", "kiri_ti.pt.optim",
                     "kiri_ti.safetensors"]
    assert load_embedding(run / "embeddings" / "kiri_ti-2.safetensors").step == 2
    assert [r["step"] for r in metrics(y)] == ["1", "2", "3", "4"]
    assert sorted(p.name for p in (Path(y["run_dir"]) / "embeddings").glob("*.pt")) == [
        "kiri_ti-3.pt", "kiri_ti-4.pt", "kiri_ti.pt"]
    assert load_embedding(run / "embeddings" / "kiri_ti-2.pt").name == "kiri_ti-2"  # A1111's names
    assert load_embedding(run / "embeddings" / "kiri_ti.pt").name == "kiri_ti"


def test_a_diverging_member_leaves_and_the_others_go_on(tmp_path, tiny_parts, monkeypatch):
    real = population_module.member_losses

    def poisoned(parts, scheduler, batches, device, **kwargs):
        losses = real(parts, scheduler, batches, device, **kwargs)
        # bee_ti's loss turns NaN from its 3rd micro-batch (step 2: batch 1, no accumulation).
        poisoned.calls += sum(b.name == "bee_ti" for b in batches)
        return [loss * float("nan") if b.name == "bee_ti" and poisoned.calls >= 3 else loss
                for b, loss in zip(batches, losses, strict=True)]

    poisoned.calls = 0
    monkeypatch.setattr(population_module, "member_losses", poisoned)
    ok = ["training.seed=3", "training.accumulate=2"]
    a, bee = train_population([config(tmp_path, *ok, "logging.run_id=ok"),
                               config(tmp_path, "embedding.name=bee_ti", "logging.run_id=bee")], parts=tiny_parts)
    assert bee["stopped"] == "non-finite loss at step 2" and bee["final_step"] == 2
    assert torch.isfinite(vectors(bee)).all()
    assert torch.equal(vectors(bee), load_embedding(Path(bee["run_dir"]) / "embeddings" / "bee_ti-2.pt").vectors)
    assert a["stopped"] is None and a["final_step"] == 4
    monkeypatch.setattr(population_module, "member_losses", real)
    assert_like_solo(a, solo(tmp_path, tiny_parts, ok, "ok"))


def test_a_member_can_join_a_running_population(tmp_path, tiny_parts):
    late = ["training.seed=4", "embedding.vectors_per_token=3", "training.batch_size=2", "training.max_steps=3"]

    class JoinWhenOneLeaves(MemberCallback):
        joined = None

        def on_member_leave(self, trainer, population, member):
            if self.joined is None:  # phase 2's rolling sweep: ask for a new trial when one ends
                self.joined = open_member(plan_member(9, config(tmp_path, *late, "logging.run_id=late"),
                                                      population.parts), population.parts)
                population.join(self.joined)

    first, second, joined = train_population(
        [config(tmp_path, "training.max_steps=2", "logging.run_id=short"),
         config(tmp_path, "training.seed=1", "training.max_steps=4", "logging.run_id=long")],
        parts=tiny_parts, callbacks=[JoinWhenOneLeaves()])
    assert [first["final_step"], second["final_step"], joined["final_step"]] == [2, 4, 3]
    assert_like_solo(joined, solo(tmp_path, tiny_parts, late, "late"))
    assert_like_solo(second, solo(tmp_path, tiny_parts, ["training.seed=1", "training.max_steps=4"], "long"))


def test_float16_members_scale_their_own_losses(tmp_path, tiny_parts):
    # The per-member GradScaler path (float16 on a GPU), run on the CPU with bfloat16 autocast.
    seen = []

    class Scalers(MemberCallback):
        def on_members_stepped(self, trainer, population, members):
            seen.extend((m.index, id(m.scaler), m.scaler.get_scale()) for m in members)

    cfgs = [config(tmp_path, "logging.run_id=h0"), config(tmp_path, "training.seed=1", "training.accumulate=2",
                                                          "logging.run_id=h1")]
    h0, h1 = train_population(cfgs, parts=tiny_parts, amp=Amp("cpu", torch.bfloat16, scaled=True),
                              callbacks=[Scalers()])
    assert len({s for i, s, _ in seen if i == 0} | {s for i, s, _ in seen if i == 1}) == 2
    assert [i for i, _, _ in seen].count(0) == 4 and [i for i, _, _ in seen].count(1) == 4
    alone = solo(tmp_path, tiny_parts, [], "h0")
    assert torch.isfinite(vectors(h0)).all() and torch.isfinite(vectors(h1)).all()
    assert (vectors(h0) - vectors(alone)).abs().max().item() < 0.05  # bfloat16: close, not equal


def test_amp_follows_training_precision():
    assert amp_for("auto", "cpu", True) == Amp("cpu")
    assert amp_for("auto", "gpu", True) == Amp("cuda", torch.bfloat16)
    assert amp_for("auto", "gpu", False) == Amp("cuda", torch.float16, scaled=True)
    assert amp_for("32", "gpu", True) == Amp("cuda")
    assert amp_for("fp16", "gpu", True).scaled and not amp_for("bf16", "gpu", False).scaled


def test_members_must_share_the_model_and_inputs_fail_before_any_folder(tmp_path, tiny_parts):
    with pytest.raises(UserError, match=r"member 1 \(b\): model\.\* differs"):
        train_population([config(tmp_path, "logging.run_id=a"),
                          config(tmp_path, "logging.run_id=b", "model.seed=3")], parts=tiny_parts)
    with pytest.raises(UserError, match="training.precision"):
        train_population([config(tmp_path), config(tmp_path, "training.precision=bf16")], parts=tiny_parts)
    with pytest.raises(UserError, match="same run folder"):
        train_population([config(tmp_path, "logging.run_id=a"), config(tmp_path, "logging.run_id=a")],
                         parts=tiny_parts)
    with pytest.raises(UserError, match=r"member 1 \(b\): .*nowhere.*data\.path"):
        train_population([config(tmp_path, "logging.run_id=a"),
                          config(tmp_path, "logging.run_id=b", f"data.path={tmp_path / 'nowhere'}")],
                         parts=tiny_parts)
    assert not (tmp_path / "runs").exists()  # member 0 left no half-made run folder behind
    # clip_skip is the one model key that may differ: the text encoder runs once per value.
    train_population([config(tmp_path, "training.max_steps=1", "logging.run_id=s1"),
                      config(tmp_path, "training.max_steps=1", "model.clip_skip=2", "logging.run_id=s2")],
                     parts=tiny_parts)


def test_a_stopped_trainer_ends_every_member_with_the_reason(tmp_path, tiny_parts):
    class StopAtTwo(MemberCallback):
        def on_members_stepped(self, trainer, population, members):
            if any(m.step == 2 for m in members):
                trainer.should_stop = True

    a, b = train_population([config(tmp_path, "logging.run_id=a"), config(tmp_path, "logging.run_id=b",
                                                                            "training.accumulate=2")],
                            parts=tiny_parts, callbacks=[StopAtTwo()])
    assert a["final_step"] == 2 and a["stopped"] == "training stopped at step 2"
    assert b["final_step"] == 1 and b["stopped"] == "training stopped at step 1"
    assert Path(a["embedding"]).is_file() and Path(b["embedding"]).is_file()


def test_a_member_resumes_from_a_solo_runs_embedding(tmp_path, tiny_parts):
    common = ["training.accumulate=2", "training.learning_rate=0.05:3, 0.01", "data.latent_sampling=random"]
    half = solo(tmp_path, tiny_parts, [*common, "training.max_steps=2"], "half")
    resumed, _ = train_population([config(tmp_path, *common, f"resume={half['embedding']}", "logging.run_id=resumed"),
                                   config(tmp_path, "training.seed=1", "logging.run_id=fresh")], parts=tiny_parts)
    assert [r["step"] for r in metrics(resumed)] == ["3", "4"]
    assert_like_solo(resumed, solo(tmp_path, tiny_parts, [*common, f"resume={half['embedding']}"], "resumed"))
    straight = solo(tmp_path, tiny_parts, common, "straight")
    assert (vectors(resumed) - vectors(straight)).abs().max().item() <= TOL  # 2 + 2 steps == 4 straight
