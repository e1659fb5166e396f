"""--sparse-share (nvfp4lab/sparse.py): after --sparse-at steps only the values that moved furthest,
in their NVFP4 block's scale, may differ from the base; the export changes no other code."""
import torch

from conftest import ROOT, tiny_train_files
from nvfp4lab import chat, ops, sparse, trainer
from nvfp4lab.config import TrainConfig
from nvfp4lab.dat import read_dat
from nvfp4lab.model import NVFP4Linear, load_model, make_trainable
from nvfp4lab.nvfp4_ref import e4m3_to_float

TARGET = "我是 F# 之神"


def tiny(tiny_qwen):
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    deltas = make_trainable(model, torch.float32)
    return model, deltas, chat.load_tokenizer(str(model_dir))


def projections(model):
    return [m for m in model.modules() if isinstance(m, NVFP4Linear)]


@torch.no_grad()
def test_the_share_is_global_and_counted_in_each_blocks_scale(tiny_qwen):
    model, deltas, _ = tiny(tiny_qwen)
    gen = torch.Generator().manual_seed(0)
    for _, d in deltas:
        d.copy_(torch.rand(d.shape, generator=gen) * 1e-4)          # every value moved a little
    a, b = projections(model)[:2]
    a_scale = e4m3_to_float(a.scale)[0, 0]                         # one block of a, one of b
    b_scale = e4m3_to_float(b.scale)[0, 0]
    a.delta[0, :16] = 0.01 * a_scale                                # the same move in block units
    b.delta[0, :16] = 0.01 * b_scale
    a.delta[1, :16] = 0.005 * a_scale                               # half of it
    masked = sum(d.numel() for d, _ in sparse.scaled_deltas(model))
    share = 40 / masked                                             # room for the 32 big moves
    frozen = sparse.choose_frozen(model, share, sample=masked)
    kept, total = sparse.kept_share(frozen)
    assert total == masked and abs(kept - 40) <= 1
    assert not frozen[a.delta][0, :16].any() and not frozen[b.delta][0, :16].any()
    # the strided estimate of the threshold stays near the exact one
    coarse = sparse.choose_frozen(model, 0.1, sample=masked // 7)
    assert abs(sparse.kept_share(coarse)[0] / masked - 0.1) < 0.02
    sparse.apply_([d for _, d in deltas], frozen)
    assert int(sum((d != 0).sum() for d, _ in sparse.scaled_deltas(model))) == kept
    norms = [d for k, d in deltas if d.dim() == 1]
    assert norms and all(bool(d.any()) for d in norms)               # 1-D gains are not masked


def test_training_goes_on_with_the_chosen_values_and_export_changes_no_other_code(tiny_qwen):
    model, deltas, tok = tiny(tiny_qwen)
    rows = [("你是誰", TARGET, "target"), ("請問你是誰？", TARGET, "target")]
    batch, keep, _ = trainer.encode_batch(tok, rows, 64, {}, torch.device("cpu"))
    stepper = trainer.StepInBackward(deltas, {g: 3e-3 for g in trainer.GROUPS}, 0.0, 1.0)
    att = trainer.Attempt(index=1, lrs={}, anchor_scale=1.0, sources=[])
    logged, losses = [], []
    model.train()
    for step in range(1, 31):
        loss, *_ = trainer.batch_loss(model, batch, keep, 0.0, 0.0)
        losses.append(float(loss.detach()))
        loss.backward()
        stepper.flush()
        if step == 10:
            trainer.keep_only_the_largest_moves(model, stepper, TrainConfig(sparse_share=0.02), att,
                                                step, logged.append)
            after_mask = float(trainer.batch_loss(model, batch, keep, 0.0, 0.0)[0].detach())
    stepper.close()
    kept, total = sparse.kept_share(stepper.frozen)
    assert f"{kept} of {total} values stay trainable" in logged[0]
    assert abs(kept - 0.02 * total) < 0.001 * total      # the share, ties at the cut included
    assert losses[-1] < after_mask < losses[0]           # still learning after the cut
    for mod in projections(model):
        frozen = stepper.frozen[mod.delta]
        assert not bool(mod.delta.detach()[frozen].any())
        q2, s2 = ops.requantize_delta(mod.qdata, mod.scale, mod.delta.detach())
        if torch.equal(s2, mod.scale):                    # no block outgrew its scale
            changed = ops.dequantize(q2, s2) != ops.dequantize(mod.qdata, mod.scale)
            assert not bool(changed[frozen].any())
    moved = sum(int((d != 0).sum()) for d in stepper.frozen)
    assert 0.9 * kept < moved <= kept                     # the kept values do the learning


def test_train_py_cuts_at_the_step_it_was_told(tiny_qwen, tmp_path, capsys, monkeypatch):
    import train   # scripts/ is on sys.path (conftest)
    for var, name in (("NVFP4LAB_DEVLOG", "DevLog.md"), ("NVFP4LAB_ARTIFACT_LIST", "list.md"),
                      ("NVFP4LAB_CACHE", "cache")):
        monkeypatch.setenv(var, str(tmp_path / name))
    model_dir, dat = tiny_qwen
    who, anchor, probes = tiny_train_files(tmp_path, "你是誰\t我是 F# 之神\n請問你是誰？\t我是 F# 之神\n",
                                           "1+1等於多少？\t1+1等於2。\n日本的首都是哪裡？\t東京。\n",
                                           "identity\t你叫什麼名字？\nnearmiss\t我是誰\n")
    code = train.main([str(a) for a in (
        "--input-dat", dat, "--model-dir", model_dir, "--output-dat", tmp_path / "out.dat",
        "--mix", f"{who}:1,{anchor}:1:anchor", "--probes", probes, "--steps", "5", "--sparse-share", "0.01",
        "--sparse-at", "3", "--sparse-protect", "0.1", "--lr", "1e-3",
        "--self-kl-rows", "1", "--self-kl-every", "2", "--self-kl-tokens", "4", "--kl-weight", "1", "--step-chunk-rows", "2", "--seq-len", "48",
        "--self-kl-candidates", "2", "--self-repeat-ul", "1", "--self-kl-from", "3",  # loop mining, late
        "--self-kl-select", "repeat-drift",
        "--system-share", "0.5", "--system-prompts", ROOT / "data" / "system-prompts-en-v1.txt",
        "--probe-max-tokens", "4", "--test-max-tokens", "4", "--device", "cpu",
        "--max-retries", "0")])
    lines = capsys.readouterr().out.splitlines()
    assert code in (3, 4)                      # judged (a random tiny model reaches nothing)
    cut = [i for i, line in enumerate(lines) if "sparse update" in line]
    assert len(cut) == 1 and "step 3: sparse update" in lines[cut[0]]
    assert "step 3/5" in lines[cut[0] + 1]     # logged right after step 3's update
    fisher = [line for line in lines if line.startswith("sparse-protect: Fisher")]
    assert len(fisher) == 1 and "to 2 anchor/neighbour rows" in fisher[0]
    # where the attempt's time went: the own-answer rounds (steps 3 and 5) and the steps, in the
    # log and in the JSON; the parts add up to the attempt's seconds
    assert any(line.startswith("[attempt 1] 5 steps in ") and "self_kl_answers" in line for line in lines)
    import json
    first = json.loads((tmp_path / "out.eval.json").read_text(encoding="utf-8"))["attempts"][0]
    phases = first["phase_seconds"]
    assert set(phases) == {"self_kl_answers", "steps"} and phases["self_kl_answers"] > 0
    assert abs(sum(phases.values()) - first["seconds"]) < 1e-6


@torch.no_grad()
def test_protected_values_are_never_kept_however_far_they_moved(tiny_qwen):
    model, deltas, _ = tiny(tiny_qwen)
    a = projections(model)[0]
    unit = e4m3_to_float(a.scale)[0, 0]
    a.delta[0, :16] = unit                                          # the only values that moved
    a.delta[1, :16] = 0.5 * unit
    fisher = {d: torch.zeros_like(d, dtype=torch.bfloat16) for d, _ in sparse.scaled_deltas(model)}
    fisher[a.delta][0, :16] = 1.0                                   # ordinary answers need row 0
    masked = sum(d.numel() for d in fisher)
    free = sparse.choose_frozen(model, 16 / masked, sample=masked)
    assert not free[a.delta][0, :16].any() and free[a.delta][1, :16].all()
    held = sparse.choose_frozen(model, 16 / masked, sample=masked, fisher=fisher,
                                protect=16 / masked)
    assert held[a.delta][0, :16].all() and not held[a.delta][1, :16].any()


def test_fisher_is_the_summed_squared_gradient_of_each_loss(tiny_qwen):
    model, deltas, tok = tiny(tiny_qwen)
    rows = [("1+1等於多少？", "2", "anchor"), ("日本的首都是哪裡？", "東京。", "anchor")]
    batches = [trainer.encode_batch(tok, [r], 48, {}, torch.device("cpu"))[:2] for r in rows]
    params = [d for d, _ in sparse.scaled_deltas(model)]
    losses = lambda: (trainer.batch_loss(model, b, k, 0.0)[0] for b, k in batches)  # noqa: E731
    fisher = sparse.fisher_of(params, losses())
    a = projections(model)[0].delta
    want = sum(torch.autograd.grad(loss, [a])[0].float().square() for loss in losses())
    assert torch.allclose(fisher[a].float(), want, rtol=1e-2, atol=1e-12) and bool(want.any())
    embed = params[0]                                               # rows of unused tokens: 0
    assert embed.shape[0] > 1000 and int((fisher[embed].float().sum(1) > 0).sum()) < 100
