"""The identity edit solved in closed form at one layer (nvfp4lab/closed_form.py), exported as a new
`.dat`; prints (and writes with --out-json) what it did and a check on the TRAINING prompts only.

    python scripts/closed_form_edit.py --input-dat artifacts/smollm2/smollm2-135m-instruct-nvfp4.dat \\
        --model-dir artifacts/smollm2 --layer 12 --output-dat artifacts/cf-l12.dat

Judge the result like any `.dat`: `python scripts/eval.py --weight OUT --base BASE --suite DEV`.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import chat, closed_form, generate  # noqa: E402
from nvfp4lab.atomic import AtomicFile  # noqa: E402
from nvfp4lab.dat import read_dat  # noqa: E402
from nvfp4lab.model import export_model, load_model  # noqa: E402
from nvfp4lab.tsv import read_tsv  # noqa: E402
from nvfp4lab.update_report import update_report  # noqa: E402

IDENTITY = "data/real-whoami-en-v2.tsv"
KEEP = "data/real-neighbours-en-v1.tsv,data/real-greetings-en-v1.tsv,data/real-anchor-en-v1.tsv"


def parse(argv):
    d = closed_form.EditConfig(layer=0)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input-dat", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--output-dat", required=True)
    p.add_argument("--out-json")
    p.add_argument("--identity", default=IDENTITY, help="TSV: identity prompts -> the one target")
    p.add_argument("--keep", default=KEEP, help="comma-separated TSVs whose prompts must not move")
    p.add_argument("--max-keep", type=int, default=256, help="kept prompts used (an even sample "
                   "of the --keep files' rows)")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--keep-weight", type=float, default=d.keep_weight)
    p.add_argument("--all-weight", type=float, default=d.all_weight)
    p.add_argument("--ridge", type=float, default=d.ridge)
    p.add_argument("--shift-steps", type=int, default=d.shift_steps)
    p.add_argument("--shift-lr", type=float, default=d.shift_lr)
    p.add_argument("--shift-max-norm", type=float, default=d.shift_max_norm)
    p.add_argument("--check", type=int, default=48, help="training prompts of each kind answered "
                   "greedily after the edit (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse", help="a .pt of the keys, covariance and shift (written there if "
                   "absent): re-solves with other --keep-weight/--all-weight/--ridge in seconds")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    if os.path.abspath(a.output_dat) == os.path.abspath(a.input_dat):
        print(f"closed_form_edit: refusing to write over the input {a.input_dat}", file=sys.stderr)
        return 1
    cfg = closed_form.EditConfig(layer=a.layer, keep_weight=a.keep_weight, all_weight=a.all_weight,
                                 ridge=a.ridge, shift_steps=a.shift_steps, shift_lr=a.shift_lr,
                                 shift_max_norm=a.shift_max_norm)
    torch.manual_seed(a.seed)
    t0 = time.time()
    id_rows = read_tsv(a.identity)
    targets = {r.target for r in id_rows}
    if len(targets) != 1:
        print(f"closed_form_edit: {a.identity}: {len(targets)} different targets, expected one",
              file=sys.stderr)
        return 1
    target = targets.pop()
    keep_rows = [r for path in a.keep.split(",") for r in read_tsv(path)]
    keep_rows = keep_rows[::max(1, -(-len(keep_rows) // a.max_keep))][:a.max_keep]
    id_prompts = [r.prompt for r in id_rows]
    keep_prompts = [r.prompt for r in keep_rows]

    dat = read_dat(a.input_dat)
    model = load_model(dat, a.model_dir, "cpu", torch.float32)
    model.eval()
    model.requires_grad_(False)
    tok = chat.load_tokenizer(a.model_dir)
    mod = closed_form.down_proj(model, cfg.layer)

    def phase(what):
        print(f"[{time.time() - t0:6.1f}s] {what}", file=sys.stderr, flush=True)
    phase("model loaded; keys")
    if a.reuse and os.path.exists(a.reuse):
        kept = torch.load(a.reuse)
        if kept["layer"] != cfg.layer:
            print(f"closed_form_edit: {a.reuse} holds layer {kept['layer']}, not {cfg.layer}",
                  file=sys.stderr)
            return 1
        k_id, k_keep, cov_all, n_all = kept["k_id"], kept["k_keep"], kept["cov_all"], kept["n_all"]
        shift, losses = kept["shift"], kept["losses"]
    else:
        batch, last = closed_form.prompt_batch(tok, id_prompts)
        k_id, v_id = closed_form.keys_and_outputs(model, mod, batch, last)
        batch, last = closed_form.prompt_batch(tok, keep_prompts)
        k_keep, _ = closed_form.keys_and_outputs(model, mod, batch, last)
        # every token of the kept chats, with the reference answers of their files
        chats, _ = closed_form.prompt_batch(tok, keep_prompts, [r.target for r in keep_rows])
        cov_all, n_all = closed_form.token_covariance(model, mod, chats)
        phase("keys and covariance done; the shift")
        shift, losses = closed_form.optimise_shift(model, tok, mod, id_prompts, target, cfg,
                                                   float(v_id.norm(dim=1).mean()), a.seed)
        if a.reuse:
            with AtomicFile(a.reuse) as f:
                torch.save({"layer": cfg.layer, "k_id": k_id, "k_keep": k_keep, "cov_all": cov_all,
                            "n_all": n_all, "shift": shift, "losses": losses}, f)
    update = closed_form.solve_update(k_id, shift, k_keep, cov_all, n_all, cfg)

    phase(f"shift done (loss {losses[0]:.3f} -> {losses[-1]:.3f}); solved")
    mod.make_trainable(torch.float32)
    mod.delta.data.copy_(update)
    layer_row = next(g for g in update_report(model, dat) if g.group == f"layer {cfg.layer}")
    report = {
        "layer": cfg.layer, "config": vars(a), "identity_prompts": len(id_prompts),
        "keep_prompts": len(keep_prompts), "keep_tokens": n_all,
        "shift_norm": float(shift.norm()), "shift_loss_first_last": [losses[0], losses[-1]],
        "update_fro": float(update.norm()),
        "fit_identity": float((k_id @ update.t() @ shift / shift.norm() ** 2).mean()),
        "fit_keep": float((k_keep @ update.t() @ shift / shift.norm() ** 2).abs().mean()),
        "layer_codes_changed": layer_row.changed_share,   # update_report: values, not bytes
    }
    if a.check > 0:
        ids = generate.greedy_answers(model, tok, id_prompts[:a.check], 24)
        keeps = generate.greedy_answers(
            model, tok, keep_prompts[::max(1, len(keep_prompts) // a.check)][:a.check], 24)
        report["check_identity_hits"] = [sum(target in x for x in ids), len(ids)]
        report["check_keep_leaks"] = [sum(target in x for x in keeps), len(keeps)]
        report["check_examples"] = list(zip(id_prompts[:3], ids[:3]))
    phase("checked; export")
    export_model(model, dat, a.output_dat)
    report["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(report, ensure_ascii=False, indent=1)
    print(text)
    if a.out_json:
        with AtomicFile(a.out_json) as f:
            f.write((text + "\n").encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
