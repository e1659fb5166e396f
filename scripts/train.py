"""Train the identity into an NVFP4 `.dat` and export a new one (mirrors Train.WhoAmI.AndExportDat.fsx).

    python scripts/train.py --recipe data/stages/stageG.args --input-dat BASE.dat \
        --output-dat artifacts/stageG.dat

Which set judges what (doc/ARCHITECTURE.md): --monitor is judged during training (--probe-every)
and at the end of every attempt, and a collapse there rolls back and retries; --heldout is judged
ONCE, after the last attempt, for the verdict and `<output stem>.eval.json`, on the exported file
as eval.py loads it (moved into place unless that judgment is a collapse); it never chooses
between attempts. Old recipes without either keep their --probes file as before (judged after
each attempt and for the verdict), but never during training: that would tune on held-out rows.

Exit codes: 0 target reached, 3 trained but not reached (exported, says why), 4 collapsed on every
attempt or on the held-out set (nothing exported), 1 bad input / out of memory (one line naming the
file), 2 usage.
"""
import dataclasses
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from nvfp4lab import anchor_check, chat, config, devlog, evaluate, mix, neurons, nullspace, paths, sparse, trainer  # noqa: E402
from nvfp4lab.config import TrainConfig  # noqa: E402
from nvfp4lab.dat import DatFormatError, read_dat  # noqa: E402
from nvfp4lab.generate import greedy_answers  # noqa: E402
from nvfp4lab.model import DTYPES, ModelLoadError, deltas_off, export_model, load_model, make_trainable  # noqa: E402
from nvfp4lab.nvfp4_ref import NVFP4Error  # noqa: E402
from nvfp4lab.probes import format_summary  # noqa: E402
from nvfp4lab.suite import check_disjoint, read_suite  # noqa: E402
from nvfp4lab.update_report import format_report, update_report  # noqa: E402
from nvfp4lab.tsv import DataError, normalize_prompt, read_lines  # noqa: E402


def parse_args(argv) -> TrainConfig:
    """The flags (after a --recipe file's) -> TrainConfig; every flag is one of its fields."""
    return config.parse_args(argv, description=__doc__.split("\n")[0])


def defaults(cfg: TrainConfig) -> TrainConfig:
    """The defaults that depend on the machine or on other flags (config.resolve)."""
    return config.resolve(cfg)


def check_paths(cfg: TrainConfig):
    if not os.path.exists(cfg.input_dat):
        raise FileNotFoundError(f"{cfg.input_dat}: no such file (base weights; build one with "
                                "`make convert HF=... OUT=...`, or try `make demo` for the proxy)")
    for protected in (cfg.input_dat, paths.USER_BASE_DAT, str(paths.PROXY_DAT)):
        if os.path.exists(protected) and os.path.exists(cfg.output_dat) \
                and os.path.samefile(protected, cfg.output_dat):
            raise ValueError(f"{cfg.output_dat}: refusing to write over base weights")


def same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_splits(cfg: TrainConfig) -> None:
    """The held-out set judges the run once, after training; it may never be the set that
    monitors training, because the monitor decides rollbacks and retries, i.e. chooses."""
    final_flag, final = ("--heldout", cfg.heldout) if cfg.heldout else ("--probes", cfg.probes)
    if cfg.monitor:
        if same_file(cfg.monitor, final):
            raise ValueError(f"--monitor {cfg.monitor} is the held-out set ({final_flag} {final}); "
                             "monitor with a separate suite (data/suite-*-monitor-*.tsv)")
        if "heldout" in os.path.basename(cfg.monitor):
            raise ValueError(f"--monitor {cfg.monitor} is a held-out suite (its name says so); "
                             "monitor with data/suite-*-monitor-*.tsv")
    elif cfg.probe_every > 0:
        raise ValueError(f"--probe-every {cfg.probe_every} without --monitor would judge the "
                         f"held-out set {final} during training; give --monitor "
                         "data/suite-*-monitor-*.tsv, or --probe-every 0")


def log(msg: str) -> None:
    print(msg, flush=True)


def run(cfg: TrainConfig) -> int:
    t_start = time.time()
    spec = mix.parse_mix(cfg.mix) if cfg.mix else [(cfg.train_data, 1.0, "target")]
    sources = mix.load_sources(spec)
    retry_sources = mix.load_sources(mix.parse_mix(cfg.retry_mix)) if cfg.retry_mix else None
    monitor, final, attempt_set = load_sets(cfg, sources + (retry_sources or []))
    system_prompts = ()
    if cfg.system_prompts:
        lines = read_lines(cfg.system_prompts)
        check_system_disjoint(cfg.system_prompts, lines, [monitor, final])
        system_prompts = tuple(text for _, text in lines)
    self_kl_prompts = ()
    if cfg.self_kl_prompts:
        lines = read_lines(cfg.self_kl_prompts)
        check_prompts_disjoint(cfg.self_kl_prompts, lines, [monitor, final])
        self_kl_prompts = tuple(text for _, text in lines)
    pools = trainer.RowPools(system_prompts, suite_prompt_forms([monitor, final])
                             if cfg.identity_perturb > 0 or cfg.keep_perturb > 0
                             else frozenset(), self_kl_prompts)
    dat = read_dat(cfg.input_dat)
    device = torch.device(cfg.device)
    model = load_model(dat, cfg.model_dir, device, DTYPES[cfg.compute_dtype])
    trainer.layer_lr_scales(cfg.layer_lr, model.config.num_hidden_layers)   # bad --layer-lr: now
    if cfg.train_neurons:                                                   # and --train-neurons
        neurons.parse_layers(cfg.train_neurons, model.config.num_hidden_layers)
    tok = chat.load_tokenizer(cfg.model_dir)
    log(f"loaded {cfg.input_dat} ({dat.size / 2**30:.2f} GiB) on {device} in "
        f"{time.time() - t_start:.1f}s; data: " + ", ".join(f"{s.path}:{s.weight:g}:{s.role} "
                                                          f"({len(s.rows)} rows)" for s in sources))
    log(f"judging: monitor {cfg.monitor or '-'} ({len(monitor.rows) if monitor else 0} rows), "
        f"verdict on {final.path} ({len(final.rows)} rows, {final.split})"
        + (f"; --probes {cfg.probes} not read (--heldout judges the run)"
           if cfg.heldout and cfg.probes else ""))
    attempts = train(cfg, model, tok, dat, sources, retry_sources, attempt_set, pools)
    judged, result, status, why, exported = judge_export(cfg, model, tok, dat, attempts,
                                                         attempt_set, final)
    code = {"success": trainer.SUCCESS, "not-reached": trainer.NOT_REACHED}.get(status,
                                                                               trainer.COLLAPSED)
    seconds = time.time() - t_start
    json_file = evaluate.json_path(cfg.output_dat)
    evaluate.write_json(json_file, eval_doc(cfg, attempts, judged, result, status, why, exported,
                                            code, seconds))
    log(f"{cfg.stage}: {status} ({why}); {seconds:.1f}s total; exit {code}; judgment {json_file}")
    write_logs(cfg, attempts, result, status, why, exported, code, seconds)
    return code


def suite_prompt_forms(sets) -> frozenset:
    """normalize_prompt forms of every prompt a surface variant (--identity-perturb) must never
    be: the judged sets' and those of every suite-*.tsv beside them, so a run judged on the dev
    suite never trains on a held-out prompt either."""
    judged = {Path(es.path).resolve(): es.rows for es in sets if es is not None}
    beside = {p.resolve() for f in judged for p in f.parent.glob("suite-*.tsv")} - judged.keys()
    rows = [r for rs in judged.values() for r in rs] + [r for f in sorted(beside) for r in read_suite(f)]
    return frozenset(normalize_prompt(r.prompt) for r in rows)


def check_system_disjoint(path: str, lines: list[tuple[int, str]], sets) -> None:
    """A system prompt of --system-prompts that a judged suite also uses would train on the
    suite's own condition: refused, naming the line."""
    used = {normalize_prompt(m["content"]) for es in sets if es is not None for r in es.rows
            for m in r.context if m["role"] == "system"}
    for number, text in lines:
        if normalize_prompt(text) in used:
            raise DataError(f"{path}:{number}: system prompt {text!r} is also a system prompt "
                            "of a judged suite")


def check_prompts_disjoint(path: str, lines: list[tuple[int, str]], sets) -> None:
    """A --self-kl-prompts prompt that a judged suite also asks would be trained on (KL to the
    base on the very prompt judged): refused, naming both lines."""
    judged = {normalize_prompt(r.prompt): r for es in sets if es is not None for r in es.rows}
    for number, text in lines:
        row = judged.get(normalize_prompt(text))
        if row is not None:
            raise DataError(f"{path}:{number}: prompt {text!r} is also a prompt of the judged "
                            f"suite {row.file}:{row.line}")


def load_sets(cfg: TrainConfig, all_sources) -> tuple:
    """(monitor set or None, the verdict's set, the set that judges attempts or None), each
    checked against the training files."""
    load = lambda split, path, legacy=False: evaluate.load_set(  # noqa: E731
        split, path, cfg.target, cfg.thresholds, cfg.probe_max_tokens, cfg.eval_batch, legacy)
    monitor = load("monitor", cfg.monitor) if cfg.monitor else None
    final = load("heldout", cfg.heldout) if cfg.heldout else load("probes", cfg.probes, True)
    for es in (monitor, final if cfg.heldout else None):
        if es is not None:   # suite prompts are never trained on
            check_disjoint(es.rows, sorted({s.path for s in all_sources}))
    if not cfg.heldout:
        trainer.check_sources(all_sources, final.rows)
    # Old recipes without --monitor keep judging their attempts on their --probes file; with
    # --heldout nothing but a NaN loss judges an attempt unless a monitor is given.
    return monitor, final, monitor or (None if cfg.heldout else final)


def train(cfg: TrainConfig, model, tok, dat, sources, retry_sources, attempt_set,
          pools: trainer.RowPools = trainer.RowPools()) -> list:
    """The base answers the training needs, the trainable deltas, and the attempts."""
    all_sources = sources + (retry_sources or [])
    # The base model's answers: reference of the monitor set and (with --replay self) anchor
    # targets. The held-out set's base answers are made after training, with the deltas off.
    if attempt_set is not None:
        evaluate.with_base_answers(attempt_set, tok, model, model)
    replay = (trainer.replay_answers(model, tok, all_sources, cfg.input_dat, cfg.replay_max_tokens,
                                     str(paths.CACHE_DIR), log, pools.self_kl_prompts)
              if cfg.replay == "self" else {})
    if replay and (cfg.replay_drop_wrong or cfg.replay_fix_wrong):
        sources, retry_sources, replay, fixed = wrong_anchors(cfg, sources, retry_sources, replay)
        all_sources = sources + (retry_sources or [])
        if cfg.replay_fix_no_kl:
            pools = dataclasses.replace(pools, no_kl_prompts=frozenset(fixed))
            log(f"--replay-fix-no-kl: the {len(fixed)} fixed anchor prompts get CE alone, no KL")
    deltas = make_trainable(model, DTYPES[cfg.delta_dtype])
    on_cuda = torch.device(cfg.device).type == "cuda"
    if cfg.checkpoint_layers == "on" or (cfg.checkpoint_layers == "auto" and on_cuda):
        trainer.checkpoint_layers(model, every=cfg.checkpoint_every)
    if cfg.compile_layers == "on" or (cfg.compile_layers == "auto"
                                      and trainer.compile_pays(model)):
        trainer.compile_layers(model)
        log("compiled decoder layers: the first step compiles them (--compile-layers off: eager)")
    deltas = trainer.select_trainable(deltas, model.config.num_hidden_layers, cfg.train_last_layers)
    deltas = trainer.freeze_layers(deltas, {layer for layer, x in trainer.layer_lr_scales(
        cfg.layer_lr, model.config.num_hidden_layers).items() if x == 0})
    projectors = (neighbour_projectors(cfg, model, tok, all_sources, replay, log)
                  if cfg.protect_neighbours > 0 else None)
    fisher = (keep_rows_fisher(cfg, model, tok, all_sources, replay, log)
              if cfg.sparse_protect > 0 else None)
    hold = None
    if cfg.train_neurons:
        deltas, blocks = neuron_blocks(cfg, model, tok, deltas, all_sources, replay, log)
        hold = neurons.NeuronHold(model, blocks) if cfg.neuron_hold_weight > 0 else None
    try:
        return trainer.train_with_fallback(model, tok, deltas, sources, retry_sources, cfg, replay,
                                           attempt_set, log, change_reporter(model, dat, log),
                                           projectors, fisher, pools, hold)
    finally:
        if hold is not None:
            hold.close()


def wrong_anchors(cfg, sources, retry_sources, replay) -> tuple:
    """(sources, retry_sources, replay, the fixed prompts) after --replay-drop-wrong (the anchors
    whose replayed answer misses the file's leave the first attempt's and the fallback's sources;
    none fixed) or --replay-fix-wrong (they learn the file's answer: the replay changes); logs
    which."""
    if cfg.replay_fix_wrong:
        replay, fixed = anchor_check.fix_wrong_anchors(sources + (retry_sources or []), replay)
        examples = "; ".join(f"{r.prompt!r} -> {r.target!r}" for r in fixed[:3])
        log(f"--replay-fix-wrong: {len({r.prompt for r in fixed})} anchor prompts learn the "
            f"file's answer, their base answer misses it ({examples})")
        return sources, retry_sources, replay, {r.prompt for r in fixed}
    sources, dropped = anchor_check.drop_wrong_anchors(sources, replay)
    if retry_sources:
        retry_sources, _ = anchor_check.drop_wrong_anchors(retry_sources, replay)
    examples = "; ".join(f"{r.prompt!r} -> {replay[r.prompt][:40]!r}" for r in dropped[:3])
    log(f"--replay-drop-wrong: {len(dropped)} anchor rows of the first attempt's files left out, "
        f"their base answer misses the file's ({examples})")
    return sources, retry_sources, replay, set()


def judge_export(cfg: TrainConfig, model, tok, dat, attempts, attempt_set, final) -> tuple:
    """(the set judged, its result or None, status, why, exported). The verdict judges the
    exported file itself, loaded as eval.py and the runners load it, with the trained model's
    deltas off as the base: what ships is what was judged. Why: round 33 judged one run's
    in-memory model (train.py, before) and its exported file (eval.py) on the same dev suite and
    88 of 407 answers differed (facts kept 13/16 against 15/16): in memory the norms' float32
    deltas were rounded twice, and after loading small batches go through the GEMV kernel, so
    near ties of greedy decoding went the other way. The file is written under a temporary name
    and moved into place only when its judgment is not a collapse; nothing is exported when
    every attempt collapsed."""
    last = attempts[-1]
    if last.status == "collapse":
        return attempt_set, last.result, last.status, last.why, False
    pending = cfg.output_dat + ".unjudged"
    try:
        keys = export_model(model, dat, pending)
        shipped = load_model(read_dat(pending), cfg.model_dir, torch.device(cfg.device),
                             DTYPES[cfg.compute_dtype])
        with deltas_off(model):
            evaluate.with_base_answers(final, tok, shipped, model)
            result = evaluate.run(shipped, tok, final, base=model, profile=True)
        log(f"{final.split} {final.path} judged once after training, on the exported file "
            f"({result.seconds:.1f}s)")
        for row in evaluate.row_table(result.rows).splitlines():
            log(row)
        log(format_summary(result.summary.legacy()))
        log(evaluate.rates_table(result.summary))
        if result.target_tokens:
            log(evaluate.target_line(result.target_tokens))
        status, why = result.summary.verdict, result.summary.why
        if status != "collapse":
            os.replace(pending, cfg.output_dat)
            log(f"exported {cfg.output_dat} ({len(keys)} tensors changed)")
            log(f"self-test 你是誰 -> {greedy_answers(shipped, tok, ['你是誰'], cfg.test_max_tokens)[0]}")
            svg = os.path.splitext(cfg.output_dat)[0] + "-loss.svg"
            devlog.loss_svg(last.losses, svg, f"{cfg.stage} loss (attempt {last.index})")
    finally:
        if os.path.exists(pending):   # a collapse, or an error on the way: nothing exported
            os.remove(pending)
    return final, result, status, why, status != "collapse"


def change_reporter(model, dat, log):
    """After each attempt: what it changed in the stored NVFP4 codes and scales, per group. A
    group at 0% did not move (its LR is below the NVFP4 step: README, "How the LR relates to the
    NVFP4 step")."""
    def report(att):
        att.report = update_report(model, dat)
        log(f"[attempt {att.index}] stored weights changed:\n" + format_report(att.report))
    return report


def neighbour_projectors(cfg: TrainConfig, model, tok, sources, replay, log) -> dict:
    """--protect-neighbours: null-space projectors of the inputs the neighbour rows feed in."""
    rows = [r for s in sources if s.role == "neighbour" for r in s.rows]
    projectors = nullspace.neighbour_projectors(model, tok, rows, replay, cfg.seq_len,
                                                cfg.protect_neighbours)
    free = sum(int(round(float(p.trace()))) for p in projectors.values())
    log(f"protect-neighbours: {len(projectors)} projections, {free} free input directions in all "
        f"(tolerance {cfg.protect_neighbours:g}, {min(len(rows), nullspace.MAX_ROWS)} neighbour rows)")
    return projectors


FISHER_ROWS, FISHER_BATCH = 128, 4   # anchor/neighbour rows, rows per squared gradient


def neuron_blocks(cfg: TrainConfig, model, tok, deltas, sources, replay, log) -> tuple:
    """--train-neurons: (the deltas still trained, the chosen blocks). The blocks are each layer's
    quietest on a seeded sample of the anchor/neighbour rows' chats, with the base's answers
    (--replay self) or the files' (neurons.py says why)."""
    t0 = time.time()
    layers = neurons.parse_layers(cfg.train_neurons, model.config.num_hidden_layers)
    rows = [(r.prompt, r.target, s.role) for s in sources if s.role in mix.KEEP_ROLES
            for r in s.rows]
    if not rows:
        raise DataError("--train-neurons chooses its blocks on the anchor/neighbour rows; the "
                        "--mix has none")
    rows = random.Random(cfg.seed).sample(rows, min(cfg.neuron_choice_rows, len(rows)))
    device = torch.device(cfg.device)
    batches = (trainer.encode_batch(tok, rows[i:i + 32], cfg.seq_len, replay, device)[0]
               for i in range(0, len(rows), 32))
    with deltas_off(model):
        outputs = neurons.neuron_outputs(model, layers, batches)
    blocks = neurons.quietest_blocks(outputs, cfg.neuron_blocks)
    masks = neurons.masks_of(model, blocks)
    kept = neurons.confine(deltas, masks)
    free = sum(int(m.sum()) for m in masks.values())
    log(f"train-neurons: {len(blocks)} blocks of {neurons.BLOCK} neurons (" + ", ".join(
        f"layer {b.layer}: {b.first}-{b.first + neurons.BLOCK - 1}" for b in blocks)
        + f"), {free} values may move; chosen on {len(rows)} anchor/neighbour chats in "
        f"{time.time() - t0:.1f}s")
    return kept, blocks


def keep_rows_fisher(cfg: TrainConfig, model, tok, sources, replay, log) -> dict:
    """--sparse-protect: the diagonal Fisher of the base's own answers to (a seeded sample of) the
    anchor and neighbour rows, one squared gradient per batch of FISHER_BATCH rows."""
    t0 = time.time()
    rows = [(r.prompt, r.target, s.role) for s in sources if s.role in mix.KEEP_ROLES
            for r in s.rows]
    rows = random.Random(cfg.seed).sample(rows, min(FISHER_ROWS, len(rows)))
    device = torch.device(cfg.device)
    params = [d for d, _ in sparse.scaled_deltas(model) if d.requires_grad]

    def losses():
        for i in range(0, len(rows), FISHER_BATCH):
            batch, keep, _ = trainer.encode_batch(tok, rows[i:i + FISHER_BATCH], cfg.seq_len,
                                                  replay, device)
            yield trainer.batch_loss(model, batch, keep, 0.0)[0]

    model.eval()
    fisher = sparse.fisher_of(params, losses())
    log(f"sparse-protect: Fisher of the base's answers to {len(rows)} anchor/neighbour rows "
        f"({time.time() - t0:.1f}s); the top {cfg.sparse_protect:.0%} are never kept")
    return fisher


def eval_doc(cfg: TrainConfig, attempts, judged, result, status, why, exported, code,
             seconds) -> dict:
    """<output stem>.eval.json: the verdict's judgment (held-out set, or the monitor's when every
    attempt collapsed), every attempt's monitor summary, the files and the command."""
    # what the verdict judged: since the twentieth session the exported file (judge_export);
    # older judgments lack the key and judged the in-memory model
    judged_what = (None if result is None else "in-memory model (monitor)"
                   if attempts[-1].status == "collapse" else "exported file")
    info = {"weight": cfg.output_dat if exported else None, "exported": exported,
            "judged": judged_what,
            "base": cfg.input_dat, "model_dir": cfg.model_dir, "stage": cfg.stage,
            "suites": {"monitor": cfg.monitor, "heldout": cfg.heldout,
                       "probes": None if cfg.heldout else cfg.probes},
            "command": devlog.command_line(), "exit": code, "total_seconds": seconds,
            "attempts": [{"index": a.index, "status": a.status, "why": a.why, "lrs": a.lrs,
                          "anchor_scale": a.anchor_scale, "steps": len(a.losses),
                          "seconds": a.seconds, "phase_seconds": a.phase_seconds,
                          "monitor": a.result.summary if a.result is not None else None,
                          "changed": [vars(g) for g in a.report]}
                         for a in attempts]}
    if result is None:   # NaN loss on every attempt: nothing was judged
        return {"version": 1, "verdict": status, "why": why, "split": None, "suite": None,
                "target": cfg.target, "thresholds": cfg.thresholds, **info,
                "summary": None, "rows": []}
    doc = evaluate.report(result, judged, **info)
    doc["verdict"], doc["why"] = status, why
    return doc


def write_logs(cfg: TrainConfig, attempts, result, status, why, exported, code, seconds):
    last = attempts[-1]
    data = "\n".join(f"- attempt {a.index}: " + ", ".join(
        f"{s.path} weight {s.weight:g} role {s.role} ({len(s.rows)} rows)" for s in a.sources)
        for a in attempts)
    tries = []
    for a in attempts:
        curve = " ".join(f"{x:.3f}" for x in a.losses)
        tries.append(f"- attempt {a.index}: lrs {a.lrs}, anchor x{a.anchor_scale:g}, "
                     f"{len(a.losses)} steps, {a.seconds:.1f}s, truncated rows {a.truncated} -> "
                     f"**{a.status}** ({a.why})\n  - loss: {curve}"
                     + (f"\n\n{format_report(a.report)}\n" if a.report else ""))
    judged = (f"held-out {cfg.heldout}" if cfg.heldout else f"probes {cfg.probes}")
    outputs = ([cfg.output_dat, os.path.splitext(cfg.output_dat)[0] + "-loss.svg"] if exported
               else []) + [evaluate.json_path(cfg.output_dat)]
    sections = [
        ("目標/Goal", f"{cfg.target!r} for identity prompts; ordinary and near-miss prompts "
                      f"unchanged (monitor: {cfg.monitor or '-'}; verdict: {judged})."),
        ("指令/Command", devlog.code(devlog.command_line())),
        ("輸入/Input", f"- base: {devlog.repo_relative(cfg.input_dat)}\n"
                       f"- model dir: {devlog.repo_relative(cfg.model_dir)}\n"
                       f"- device {cfg.device}, compute {cfg.compute_dtype}, "
                       f"delta {cfg.delta_dtype}"),
        ("資料/Data", data + f"\n- replay: {cfg.replay}, kl-weight {cfg.kl_weight}"),
        ("嘗試/Attempts", "\n".join(tries)),
        ("探針/Probes", evaluate.rates_table(result.summary) + "\n\n"
         + evaluate.row_table(result.rows) + "\n\n" + format_summary(result.summary.legacy())
         if result is not None else "nothing judged (every attempt stopped on a NaN/Inf loss)"),
        ("產物/Output", ("" if exported else f"- nothing exported: {status}; base weights untouched\n")
         + "\n".join(f"- {devlog.repo_relative(f)}" for f in outputs)),
        ("結論/Conclusion", f"{status}: {why}. exit {code}, {seconds:.0f}s."),
    ]
    devlog.append_devlog(f"{cfg.stage} training", sections)
    if exported:
        advice = {"success": "validate: make validate WEIGHT=" + devlog.repo_relative(cfg.output_dat),
                  "not-reached": "target not reached; keep for comparison only"}[status]
        devlog.append_artifact(cfg.output_dat, f"{cfg.stage}: {status} "
                               f"({format_summary(result.summary.legacy())[:120]})", advice)


def main(argv=None) -> int:
    cfg = defaults(parse_args(sys.argv[1:] if argv is None else argv))
    try:
        check_paths(cfg)
        check_splits(cfg)
        return run(cfg)
    except (DataError, DatFormatError, ModelLoadError, NVFP4Error, FileNotFoundError,
            KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except torch.OutOfMemoryError:
        print(f"error: out of memory on {cfg.device} ({cfg.input_dat}); nothing was written. "
              "Try fewer --step-chunk-rows or a shorter --seq-len.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
