"""TrainConfig: every setting of scripts/train.py, its default, its flag and its help, in one place.

Each field is one flag: `--seq-len` is the field `seq_len`, its type annotation is the flag's type
(bool = a switch), and flag() holds the default, the help and any choices. parse_args builds
argparse from the fields, so a default is written once; the thresholds are the one nested field,
whose flags come from probes.Thresholds. A --recipe file (data/stages/*.args) is a list of
flags read before the command line, so the command line overrides it.

Defaults that depend on the machine or on other flags (input file, model dir, stage name, output
file, compute dtype, old probe file) are None here and filled by resolve(), after parsing.
"""
import argparse
import os
import shlex
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace

import torch

from . import paths
from .model import DTYPES
from .probes import Thresholds, add_threshold_args, thresholds_from_args

GROUPS = ("head", "embed", "norm", "blocks")   # trainer.group_of: the LR groups
SCHEDULES = ("constant", "cosine")             # trainer.lr_scale
LEGACY_PROBES = "data/probes-v1.tsv"


def flag(default=None, help=None, *, default_factory=MISSING, **argparse_kw):
    """A field that is a flag: `default` is its one default; argparse_kw (choices, metavar) go to
    add_argument as they are."""
    meta = {"help": help, **argparse_kw}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainConfig:
    recipe: str | None = flag(help="file of default flags (data/stages/*.args); flags given here "
                                   "override it")
    # The original's flags.
    train_data: str | None = flag(help="one TSV (prompt<TAB>target); same as --mix FILE:1")
    input_dat: str | None = flag(help="base weights (default: the user's 4B file, else the proxy)")
    output_dat: str | None = flag(help="new .dat to write (default artifacts/<stage>.dat)")
    steps: int = flag(60)
    loss: str = flag("ce", choices=["ce"])
    seq_len: int = flag(64)
    step_chunk_rows: int = flag(16, "rows per step")
    lr: float = flag(1e-5, "default LR of every group")
    log_every: int = flag(1)
    test_max_tokens: int = flag(24, "self-test answer to 你是誰 after training")
    sample_mode: str = flag("random", choices=["random", "sequential"])
    seed: int = flag(123)
    compute_dtype: str | None = flag(help="default bfloat16 (float32 on CPU)", choices=list(DTYPES))
    train_last_layers: int = flag(0, "0 = full model")
    layer_lr: str | None = flag(help="LR multipliers of decoder layers, 'A-B:x[,C:y]' (e.g. "
                                     "'20-24:0.3,0-4:0'): the blocks and norms of layers A..B "
                                     "train at x times their group's LR, in every attempt; "
                                     "0 freezes them")
    optimizer_state_mode: str = flag("delta", "accepted for old commands; AdamW states follow "
                                              "--delta-dtype")
    # New flags.
    model_dir: str | None = flag(help="config.json (+ tokenizer); default: the user's dir, else "
                                      "the proxy")
    stage: str | None = flag(help="name used in logs (default: output file stem)")
    mix: str | None = flag(help="FILE:WEIGHT[:ROLE],... sampled per step at those ratios; ROLE "
                                "target (default), anchor (keep the base's answers) or neighbour "
                                "(a near miss: kept like an anchor, and the identity pushed down "
                                "by --unlikelihood-weight)")
    retry_mix: str | None = flag(help="the mix used by attempts after a collapse (default: --mix)")
    # One per GROUPS entry (test_config checks it); None = --lr (see lrs).
    lr_head: float | None = flag(help="LR of the head group (default --lr)")
    lr_embed: float | None = flag(help="LR of the embed group (default --lr)")
    lr_norm: float | None = flag(help="LR of the norm group (default --lr)")
    lr_blocks: float | None = flag(help="LR of the blocks group (default --lr)")
    replay: str = flag("none", "self: anchor targets = the base model's own greedy answers "
                               "(cached)", choices=["none", "self"])
    replay_max_tokens: int = flag(48)
    replay_drop_wrong: bool = flag(
        False, "with --replay self: leave out the anchor rows whose replayed base answer has none "
               "of the key words of the file's short answer (nvfp4lab/anchor_check.py): their "
               "targets are the base's mistakes ('A carrot is a carrot!'), which CE would teach")
    replay_fix_wrong: bool = flag(
        False, "with --replay self: those same anchor rows (see --replay-drop-wrong) learn the "
               "file's short answer instead of the base's mistake ('A carrot is orange.'); their "
               "KL to the base stays. Not together with --replay-drop-wrong")
    replay_fix_no_kl: bool = flag(
        False, "with --replay-fix-wrong: the fixed anchor rows learn the file's answer by CE "
               "alone, no KL to the base, whose distribution at the answer's key word is the "
               "wrong answer it gave ('A lemon is' -> ' a fruit!'): with KL 6 against a CE of 1 "
               "the fix reaches about (6 p_base + 1)/7. Tried in round 29 as the cause of the "
               "colour facts v18 loses; it is not (on seeds 16-17 facts 27/32 against the "
               "control's 29/32, and a random edit of the same size loses the same facts: doc/"
               "METHOD.md round 29). Their surface variants (--keep-perturb) and the model's own "
               "answers to them (--self-kl-rows) keep the KL")
    replay_stock_kl: int = flag(
        0, "with --replay self: keep rows whose replayed base answer is the same text (case and "
           "spacing aside) for N or more keep prompts get the KL alone, no CE. SmolLM2 on the "
           "H200 answers 24 of v16's keep prompts with \"I'm sorry for any mistakes.\" and 12 "
           "more with it twice (round 26's log): CE on one greedy answer over many prompts "
           "sharpens it into an attractor the edit's near misses fall into; the KL keeps the "
           "base's whole distribution. Rows asked in a --keep-perturb variant are matched by "
           "prompt, so they are not covered (with --keep-perturb-answer file they learn the "
           "file's answer, not the stock one); 0 = off",
        metavar="N")
    kl_weight: float = flag(0.0, "KL(base || model) on the answer tokens of anchor and neighbour "
                                 "rows")
    keep_ce_weight: float = flag(
        1.0, "weight of the CE on the rows that get the KL (anchor and neighbour rows: their "
             "targets are the base's own greedy answers); 0 = KL only. CE on greedy answers "
             "sharpens the model toward them, KL keeps the base's whole distribution")
    keep_margin_weight: float = flag(
        0.0, "with --kl-weight: weight of a hinge on the KL positions that keeps the base's greedy "
             "token ahead, max(0, min(m_base, --keep-margin) - m_model), m = log p(the base's top "
             "token) - the largest other log p. Facts and loops are judged on greedy answers, and "
             "the KL, an average over the whole distribution, spends little on a near tie that a "
             "step flips (dev's colour facts: the base says 'red' late, after a near tie); 0 = off")
    keep_margin: float = flag(
        1.0, "with --keep-margin-weight: the most margin (nats) it holds; a base margin above it "
             "is held only down to it, a smaller one down to the base's")
    head_chunk_mib: int = flag(
        0, "the most MiB of float32 head logits a train step's loss holds at once: a batch with "
           "more labelled positions computes the loss a chunk of positions at a time and "
           "recomputes each chunk's logits in backward (the same terms within float rounding, "
           "tests/test_head_chunk.py); 0 = one piece. Measured on the H200, 4B shape, 64 x 96 "
           "rows with KL on each, layer checkpointing: 256 MiB (441 positions) takes the peak "
           "from 41.1 to 31.4 GiB and the step from 0.714 to 0.807 s (doc/BENCHMARKS.md)",
        metavar="MIB")
    unlikelihood_weight: float = flag(
        0.0, "weight of -log(1 - p) of the --target answer, teacher-forced on each neighbour row "
             "(from the first token where it leaves the row's own answer); 0 = off")
    unlikelihood_tokens: int = flag(
        0, "with --unlikelihood-weight: push down only this many tokens of the identity answer "
           "on a neighbour row, from the first one where it leaves the row's own answer; the "
           "rest of the answer is not taught as something to avoid, so a borderline identity "
           "prompt does not end it wrongly (\"the God of F#1\"); 0 = every token from there")
    unlikelihood_skip: int = flag(
        0, "with --unlikelihood-weight: never push down the identity answer's first N tokens on a "
           "neighbour row (SmolLM2: 3 = 'I am the'), only from there or from where it leaves the "
           "row's own answer, whichever is later: its generic opening is how an identity answer "
           "starts too, and pushing ' am' down on near misses turns borderline identity answers "
           "into \"I'm ...\"; 0 = from the divergence")
    context_share: float = flag(
        0.0, "share of neighbour rows asked as turn 2, after an identity prompt answered with the "
             "target (they learn the base's single-turn answer, without KL); 0 = off")
    identity_context_share: float = flag(
        0.0, "share of identity rows asked after one or two ordinary exchanges (anchor prompts "
             "with the base's answers), so the edit holds in the middle of a chat; 0 = off")
    system_share: float = flag(
        0.0, "share of identity and neighbour rows asked under a system prompt drawn from "
             "--system-prompts instead of the chat template's default one, so the edit (and the "
             "neighbours' answers) hold whatever system prompt a chat starts with; 0 = off")
    system_prompts: str | None = flag(
        None, "file of system prompts for --system-share, one per line (# comments); none of "
              "them may be a suite's system prompt", metavar="FILE")
    lr_schedule: str = flag("constant", "constant, or cosine down to 0 at the last step (after "
                                        "--warmup-steps)", choices=SCHEDULES)
    warmup_steps: int = flag(0, "linear LR warm-up over the first N steps")
    protect_neighbours: float = flag(
        0.0, "project every projection's update onto the null space of the inputs the neighbour "
             "rows send into it (eigenvalues <= TOL x the largest; AlphaEdit-style; 0 = off)",
        metavar="TOL")
    self_kl_rows: int = flag(
        0, "every --self-kl-every steps, this many anchor prompts are answered greedily by the "
           "model being trained, and those answers get KL to the base only (no CE): the base "
           "judges the states the edit reaches, where loops start (0 = off)")
    self_kl_every: int = flag(1, "steps between --self-kl-rows rounds")
    self_kl_from: int = flag(
        1, "first step of the --self-kl-rows rounds: a later start leaves the early steps, where "
           "the identity is learnt, to the identity and keep rows, and spends the rounds (and "
           "--self-repeat-ul) on the loops of the edit that exists by then")
    self_kl_tokens: int = flag(32, "answer length of --self-kl-rows (the suites judge 32)")
    self_kl_batch: int = flag(
        0, "answers per decode batch of a --self-kl-rows round (its candidates); 0 = the suites' "
           "batch (64 on a GPU, 16 on the CPU). Why: a small model's decode step is launch-bound, "
           "so one batch of 384 costs about what one of 64 does; its KV cache is rows x (prompt "
           "+ --self-kl-tokens) tokens. Rows decoded in another batch may differ in the last bit")
    self_kl_pool: str = flag("anchor", "prompts of --self-kl-rows: anchor (ordinary requests) or "
                                       "keep (anchors and near-miss neighbours)",
                             choices=("anchor", "keep"))
    self_kl_prompts: str | None = flag(
        None, "file of extra prompts, one a line (# comments), that only the --self-kl-rows rounds "
              "ask, beside the anchor prompts: never a step row, no CE; their base answers join "
              "the replay, so a loop on them is judged against the base's own answer. Why: the "
              "edit loops on open requests (pros and cons, slogans, lists) that the anchor pool, "
              "mostly short facts, seldom asks. None may be a prompt of a judged suite",
        metavar="FILE")
    self_kl_candidates: int = flag(
        0, "with --self-kl-rows N: answer this many prompts (>= N) and keep the N whose answers "
           "repeat themselves most beyond the base's own answer to the same prompt, so the KL and "
           "--self-repeat-ul land on the loops the edit starts (0 = N: no choice)")
    self_kl_select: str = flag(
        "repeat", "with --self-kl-candidates: repeat keeps the answers that repeat themselves most "
                  "beyond the base's (ties in draw order); repeat-drift breaks those ties, most "
                  "answers, by drift: the share of the key words of the base's first sentence "
                  "(the replay, --replay-fix-wrong's fixes included) the answer lost, so the "
                  "rounds land on the facts the edit is forgetting as well as on its loops "
                  "(measured: ties are rare, it chose nearly what repeat chose); loop-drift keeps "
                  "the loops by the suites' rule first and fills the rest by drift",
        choices=("repeat", "repeat-drift", "loop-drift"))
    self_repeat_ul: float = flag(
        0.0, "with --self-kl-rows: weight of -log(1 - p) of every token of the model's own answer "
             "that completes a 3-token n-gram already in that answer (repetition unlikelihood, "
             "Welleck et al. 2019): a loop the edit starts is pushed down where it starts; 0 = off")
    trim_base_loops: float = flag(
        0.0, "a keep (anchor/neighbour) row whose replayed base answer repeats itself this much "
             "(the suites' repetition measure, 0-1) learns that answer only up to the last "
             "sentence end before it goes round, then the end token, and gets no KL on that end: "
             "the base's own loops ('I'm sorry for any mistakes. I'm sorry for ...') are not "
             "taught (no sentence end before the loop: the answer stays whole); 0 = off")
    identity_perturb: float = flag(
        0.0, "share of identity rows asked in a fresh surface variant each time they are drawn "
             "(a typo, lower or upper case, an acknowledgement first; never a suite prompt): the "
             "question is learnt under spellings no training file lists; 0 = off")
    keep_perturb: float = flag(
        0.0, "share of anchor and neighbour rows asked in a fresh surface variant each time they "
             "are drawn (the same variants as --identity-perturb, never a suite prompt), with KL "
             "to the base on the variant and the neighbours' unlikelihood of the identity answer: "
             "typos and acknowledgements are trained on both sides of the boundary, so they do not "
             "come to mean 'identity'; the CE answer is --keep-perturb-answer's; 0 = off")
    keep_perturb_answer: str = flag(
        "file", "the CE answer of a --keep-perturb variant: file = the data file's own answer "
                "(what round 17 measured: the replayed answers are keyed by the plain prompt, so "
                "a variant finds none), base = the base's replayed answer to the plain prompt",
        choices=["file", "base"])
    identity_mine_rows: int = flag(
        0, "every --identity-mine-every steps, this many extra identity rows: the hardest of "
           "--identity-mine-candidates drawn as identity rows are (variants, contexts, system "
           "prompts), i.e. those whose identity answer the model finds least likely now (0 = off)")
    identity_mine_candidates: int = flag(
        64, "identity rows scored (one forward pass, no gradients) to pick --identity-mine-rows "
            "among; at least --identity-mine-rows")
    identity_mine_batch: int = flag(
        0, "rows per scoring forward of an --identity-mine-rows round (its candidates); 0 = 32, "
           "as before the flag. Why: a small model's forward is launch-bound, so one "
           "forward of 128 candidates costs about what one of 32 does (the mining was 22 s of "
           "real-en-v15's 122 s on an H200); lm_head runs on the answer tokens only. Rows "
           "scored in another batch may differ in the last bit")
    identity_mine_every: int = flag(1, "steps between --identity-mine-rows rounds")
    identity_mine_from: int = flag(1, "first step of the --identity-mine-rows rounds")
    sparse_share: float = flag(
        0.0, "after --sparse-at steps only this share of the NVFP4 and 2-D values, those that "
             "moved furthest in their block's scale, may differ from the base; the rest go back "
             "to it (nvfp4lab/sparse.py; 0 = off)", metavar="SHARE")
    sparse_at: int = flag(60, "the step after which --sparse-share chooses its values")
    sparse_restart: bool = flag(
        False, "with --sparse-share: the LR schedule starts again after the cut (warm-up, then "
               "--lr-schedule over the remaining steps), so the kept values get a second peak")
    sparse_protect: float = flag(
        0.0, "with --sparse-share: this share of the values, those the base's answers to the "
             "anchor and neighbour rows depend on most (diagonal Fisher at the base), is never "
             "kept (0 = off)", metavar="SHARE")
    train_neurons: str | None = flag(
        help="confine the edit to --neuron-blocks blocks of 16 MLP neurons in each of these "
             "decoder layers, 'A-B[,C]' (nvfp4lab/neurons.py): only their gate/up rows and "
             "down_proj columns move, every other stored byte stays the base's; the blocks are "
             "those whose output on the anchor/neighbour rows' chats is smallest", metavar="LAYERS")
    neuron_blocks: int = flag(1, "with --train-neurons: blocks of 16 neurons a layer")
    neuron_hold_weight: float = flag(
        0.0, "with --train-neurons: weight of the hold term, the change of the blocks' output on "
             "the anchor/neighbour rows' tokens over the base MLP's whole output there (0 = off)")
    neuron_choice_rows: int = flag(256, "with --train-neurons: anchor/neighbour chats that choose "
                                        "the quietest blocks")
    keep_best: bool = flag(
        False, "keep the best --monitor checkpoint of each attempt (trainer.monitor_score) and "
               "end the attempt on it; a monitor collapse after a kept checkpoint stops early "
               "instead of rolling back")
    patience: int = flag(0, "with --keep-best: stop an attempt after N monitor rounds without a "
                            "better score (0 = off)")
    grad_clip: float = flag(1.0, "grad-norm clip per decoder layer (the optimizer steps inside "
                                 "backward; 0 = off)")
    weight_decay: float = flag(0.0, "AdamW decay of the deltas (toward base)")
    adam_state_bits: int = flag(
        16, "bits a value of each AdamW state: 16 = torch's AdamW in the delta dtype; 8 = "
            "nvfp4lab.adam8 (log codes, one fp32 scale per 256 values: on the 4B 8.1 GiB less "
            "held than 16)", choices=[16, 8])
    delta_dtype: str = flag("bfloat16", choices=["bfloat16", "float32"])
    checkpoint_layers: str = flag(
        "auto", "recompute each decoder layer in backward instead of keeping its activations "
                "(4B: -6 GiB); auto = on for CUDA, off on the CPU where time is the limit",
        choices=["auto", "on", "off"])
    checkpoint_every: int = flag(
        1, "with layer checkpointing on, recompute only layers 0, N, 2N, ... (the others keep "
           "their activations): a share 1/N of the memory saved for 1/N of the recompute")
    compile_layers: str = flag(
        "auto", "torch.compile each decoder layer's training forward (trainer.compile_layers; "
                "generation stays eager). auto = on for CUDA models of at least 1e9 NVFP4 weights "
                "when triton is there (the user's 4B: a step 0.40 -> 0.19 s with layer "
                "checkpointing on an H200, ~10 s of compile, doc/BENCHMARKS.md), off otherwise: on the CPU and for "
                "SmolLM2, whose recorded study runs are eager and reproduce bit for bit",
        choices=["auto", "on", "off"])
    max_retries: int = flag(2, "attempts after a collapse")
    retry_lr_scale: float = flag(0.5, "every LR is multiplied by this per retry")
    probe_every: int = flag(0, "judge the --monitor set every N steps too (0 = only after each "
                               "attempt)")
    monitor: str | None = flag(help="suite judged during training and after each attempt "
                                    "(collapse -> retry)")
    heldout: str | None = flag(help="suite judged once after training: the verdict and "
                                    "<out>.eval.json")
    probes: str | None = flag(help=f"old probe file (kind<TAB>prompt[<TAB>expect]) for the "
                                   f"verdict when no --heldout is given (default {LEGACY_PROBES})")
    target: str = flag("我是 F# 之神")
    probe_max_tokens: int = flag(32, "answer length when judging")
    eval_batch: int | None = flag(help="chats per generate batch when judging (default 64 on "
                                       "CUDA, 16 on the CPU)")
    # --min-identity ... --collapse-loops: flags, defaults and help from probes.Thresholds.
    thresholds: Thresholds = field(default_factory=Thresholds)
    device: str = flag(default_factory=default_device)

    @property
    def lrs(self) -> dict:
        """LR per group: --lr-<group>, else --lr."""
        own = {g: getattr(self, f"lr_{g}") for g in GROUPS}
        return {g: self.lr if lr is None else lr for g, lr in own.items()}


def flag_name(f) -> str:
    return "--" + f.name.replace("_", "-")


def flag_fields() -> list:
    """The fields that are one flag each (all but the nested thresholds)."""
    return [f for f in fields(TrainConfig) if f.name != "thresholds"]


def add_flag(parser: argparse.ArgumentParser, f, hint) -> None:
    """The field's flag: its type from the annotation (`float | None` -> float; bool -> a
    switch), its default and metadata from flag()."""
    kw = dict(f.metadata)
    kw["default"] = f.default_factory() if f.default_factory is not MISSING else f.default
    if hint is bool:
        kw["action"] = "store_true"
    else:
        kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
        if kinds[0] is not str:
            kw["type"] = kinds[0]
    parser.add_argument(flag_name(f), **kw)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """argparse from the fields, in field order (the order --help lists them)."""
    parser = argparse.ArgumentParser(description=description)
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name == "thresholds":
            add_threshold_args(parser)
        else:
            add_flag(parser, f, hints[f.name])
    return parser


def recipe_flags(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """A recipe's flags: shell words, one or more per line; `#` starts a comment line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        parser.error(f"{path}: {e.strerror}")
    return [t for line in text.splitlines() if not line.lstrip().startswith("#")
            for t in shlex.split(line)]


def parse_args(argv, description: str | None = None) -> TrainConfig:
    """The command line (after the --recipe file's flags, so it wins) -> TrainConfig. Usage
    errors, an unknown flag in a recipe too, exit 2 as argparse does."""
    parser = build_parser(description)
    ns = parser.parse_args(argv)
    if ns.recipe:
        ns = parser.parse_args(recipe_flags(parser, ns.recipe) + list(argv))
    if not ns.mix and not ns.train_data:
        parser.error("give --train-data or --mix (or a --recipe that does)")
    if not 0.0 <= ns.sparse_share < 1.0:
        parser.error(f"--sparse-share {ns.sparse_share:g}: a share of the values, 0 <= SHARE < 1")
    if not 0.0 <= ns.keep_ce_weight <= 1.0:
        parser.error(f"--keep-ce-weight {ns.keep_ce_weight:g}: 0 <= WEIGHT <= 1")
    if ns.keep_margin_weight < 0 or (ns.keep_margin_weight > 0 and ns.kl_weight <= 0):
        parser.error(f"--keep-margin-weight {ns.keep_margin_weight:g}: a weight >= 0 on the KL "
                     "positions; give --kl-weight too")
    if ns.checkpoint_every < 1:
        parser.error(f"--checkpoint-every {ns.checkpoint_every}: every Nth layer, N >= 1")
    if ns.head_chunk_mib < 0:
        parser.error(f"--head-chunk-mib {ns.head_chunk_mib}: MiB >= 0 (0 = one piece)")
    if ns.keep_margin <= 0:
        parser.error(f"--keep-margin {ns.keep_margin:g}: a margin in nats > 0")
    if ns.self_kl_batch < 0:
        parser.error(f"--self-kl-batch {ns.self_kl_batch}: 0 (the suites' batch) or more")
    if ns.self_kl_rows < 0 or ns.self_kl_every < 1 or ns.self_kl_tokens < 1:
        parser.error("--self-kl-rows >= 0, --self-kl-every >= 1 and --self-kl-tokens >= 1")
    if not 0.0 <= ns.system_share <= 1.0 or (ns.system_share > 0) != bool(ns.system_prompts):
        parser.error(f"--system-share {ns.system_share:g}: a share (0 <= SHARE <= 1), given "
                     "together with --system-prompts FILE")
    if ns.unlikelihood_skip < 0:
        parser.error(f"--unlikelihood-skip {ns.unlikelihood_skip}: a count >= 0 (0 = from the divergence)")
    if ns.unlikelihood_tokens < 0:
        parser.error(f"--unlikelihood-tokens {ns.unlikelihood_tokens}: a count >= 0 (0 = all)")
    if not 0.0 <= ns.trim_base_loops <= 1.0:
        parser.error(f"--trim-base-loops {ns.trim_base_loops:g}: a repetition, 0 <= R <= 1 (0 = off)")
    if not 0.0 <= ns.identity_perturb <= 1.0:
        parser.error(f"--identity-perturb {ns.identity_perturb:g}: a share, 0 <= SHARE <= 1")
    if not 0.0 <= ns.keep_perturb <= 1.0:
        parser.error(f"--keep-perturb {ns.keep_perturb:g}: a share, 0 <= SHARE <= 1")
    if ns.replay_stock_kl < 0 or (ns.replay_stock_kl and ns.replay != "self"):
        parser.error(f"--replay-stock-kl {ns.replay_stock_kl}: a count >= 0 (0 = off), with "
                     "--replay self")
    if ns.replay_fix_no_kl and not ns.replay_fix_wrong:
        parser.error("--replay-fix-no-kl: with --replay-fix-wrong (it concerns the anchors that "
                     "learn the file's answer)")
    if ns.replay_fix_wrong and ns.replay_drop_wrong:
        parser.error("--replay-fix-wrong and --replay-drop-wrong: one or the other (the wrong "
                     "anchors either learn the file's answer or are left out)")
    if ns.identity_mine_rows < 0 or ns.identity_mine_every < 1 or ns.identity_mine_from < 1:
        parser.error("--identity-mine-rows >= 0, --identity-mine-every >= 1 and "
                     "--identity-mine-from >= 1")
    if ns.identity_mine_batch < 0:
        parser.error(f"--identity-mine-batch {ns.identity_mine_batch}: 0 (= 32) or more")
    if ns.identity_mine_rows and ns.identity_mine_candidates < ns.identity_mine_rows:
        parser.error(f"--identity-mine-candidates {ns.identity_mine_candidates}: at least "
                     f"--identity-mine-rows ({ns.identity_mine_rows}) rows to choose among")
    if ns.self_kl_from < 1:
        parser.error(f"--self-kl-from {ns.self_kl_from}: a step, >= 1")
    if ns.self_kl_prompts and ns.self_kl_rows == 0:
        parser.error(f"--self-kl-prompts {ns.self_kl_prompts}: asked only by --self-kl-rows rounds; "
                     "give --self-kl-rows")
    if ns.self_kl_candidates and (ns.self_kl_rows == 0 or ns.self_kl_candidates < ns.self_kl_rows):
        parser.error(f"--self-kl-candidates {ns.self_kl_candidates}: 0, or at least --self-kl-rows "
                     f"({ns.self_kl_rows}) prompts to choose the loops among; give --self-kl-rows")
    if ns.self_kl_select != "repeat" and ns.self_kl_candidates <= ns.self_kl_rows:
        parser.error(f"--self-kl-select {ns.self_kl_select}: chooses among --self-kl-candidates; "
                     "give more candidates than --self-kl-rows")
    if ns.self_repeat_ul < 0 or (ns.self_repeat_ul > 0 and ns.self_kl_rows == 0):
        parser.error(f"--self-repeat-ul {ns.self_repeat_ul:g}: a weight >= 0 on the answers of "
                     "--self-kl-rows; give --self-kl-rows too")
    if not 0.0 <= ns.sparse_protect < 1.0 or (ns.sparse_protect > 0 and ns.sparse_share == 0):
        parser.error(f"--sparse-protect {ns.sparse_protect:g}: a share of the values (0 <= SHARE "
                     "< 1) that --sparse-share never keeps; give --sparse-share too")
    if ns.sparse_restart and ns.sparse_share == 0:
        parser.error("--sparse-restart restarts the LR schedule at the --sparse-share cut; give "
                     "--sparse-share too")
    if ns.sparse_share > 0 and not 1 <= ns.sparse_at < ns.steps:
        parser.error(f"--sparse-at {ns.sparse_at}: the values are chosen after a step of the run, "
                     f"1 <= STEP < --steps ({ns.steps}); give a smaller --sparse-at, or "
                     "--sparse-share 0 for a dense update")
    if ns.train_neurons and ns.sparse_share > 0:
        parser.error("--train-neurons and --sparse-share both choose which values move; give one")
    if (ns.neuron_hold_weight != 0 or ns.neuron_blocks != 1) and not ns.train_neurons:
        parser.error("--neuron-hold-weight and --neuron-blocks act on the --train-neurons blocks; "
                     "give --train-neurons too")
    if ns.neuron_blocks < 1 or ns.neuron_hold_weight < 0 or ns.neuron_choice_rows < 1:
        parser.error("--neuron-blocks and --neuron-choice-rows must be >= 1 and "
                     "--neuron-hold-weight >= 0")
    return TrainConfig(**{f.name: getattr(ns, f.name) for f in flag_fields()},
                       thresholds=thresholds_from_args(ns))


def resolve(cfg: TrainConfig) -> TrainConfig:
    """The defaults that depend on the machine or on other flags (their help texts say which)."""
    input_dat = cfg.input_dat or (paths.USER_BASE_DAT if os.path.exists(paths.USER_BASE_DAT)
                                  else str(paths.PROXY_DAT))
    stage = cfg.stage or (os.path.splitext(os.path.basename(cfg.output_dat))[0]
                          if cfg.output_dat else "stage")
    return replace(cfg, input_dat=input_dat, model_dir=cfg.model_dir or paths.default_model_dir(),
                   stage=stage, output_dat=cfg.output_dat or f"artifacts/{stage}.dat",
                   compute_dtype=cfg.compute_dtype or ("float32" if cfg.device == "cpu"
                                                       else "bfloat16"),
                   probes=cfg.probes if cfg.heldout or cfg.probes else LEGACY_PROBES)


def recipe_threshold_defaults(p, argv) -> None:
    """--thresholds-of RECIPE (eval.py, revert_groups.py): the threshold flags' defaults become
    the thresholds train.py --recipe RECIPE judges with, so an edit made or changed outside
    train.py (a merge of several runs, a group put back) is judged exactly as the runs were; a
    threshold flag given too still wins."""
    first, _ = p.parse_known_args(argv)
    if first.thresholds_of:
        p.set_defaults(**asdict(parse_args(["--recipe", first.thresholds_of]).thresholds))
