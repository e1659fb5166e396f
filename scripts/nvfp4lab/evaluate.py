"""Evaluation v2: judge a model on a suite, one typed result per row, one summary with counts and
95% intervals, one verdict; written as JSON next to the judged `.dat` and as a DevLog table.

What is measured (rows: nvfp4lab.suite; the old probe files are read into the same rows):
  efficacy         the canonical edit prompt answered with the target: the identity row that IS
                   the edit question (你是誰 / "Who are you?", no context) when the suite has it,
                   else its first identity row of group `plain` (efficacy_index)
  generalisation   identity rows answered with the target
  near-miss leak   nearmiss rows (not greetings) answered with the target
  context leak     context-nearmiss rows answered with the target
  greeting intro   non-identity rows of group `greeting` answered with the target
  facts kept       rows with keywords whose keyword the BASE answered: still there after
  exact kept       fact/general rows answered exactly as the base did
  loops added      answers whose repetition exceeds the base's own answer's by > max_repetition
  NLL drift, KL    per token over the base's own answers to `general` rows: mean NLL under the
                   model minus under the base, and mean KL(base || model)
Without a base model the base-relative measures (facts, exact, NLL drift, KL) are n/a and loops
are counted against an empty base answer.

The verdict (decide) uses probes.Thresholds: collapse first (a fact/general row answered with
the identity, loops in more than collapse_loops of the answers, most known facts lost, NLL drift
above collapse_nll_drift, NaN/Inf scores), then not-reached (any min_/max_ bound missed), else
success.
"""
import json
import math
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass

from .atomic import AtomicFile
from .generate import answer_batches, answer_log_probs, default_batch_size, greedy_chats, model_device
from .model import deltas_off
from .probes import Thresholds, repetition
from .suite import SuiteRow, messages, read_suite
from .tsv import DataError, normalize_prompt, read_probes

# The question the identity is trained on, in both languages of this project: where a suite
# holds it, that row measures efficacy (the edit itself) rather than a paraphrase.
EDIT_QUESTIONS = ("你是誰", "Who are you?")
TARGETS = {"zh": "我是 F# 之神", "en": "I am the God of F#."}


def suite_target(path: str) -> str:
    """The identity answer a suite judges: by its language, '-en-' in the file's name."""
    return TARGETS["en" if "-en-" in os.path.basename(path) else "zh"]
GREETING = "greeting"
Z95 = 1.959963984540054


# ---------------------------------------------------------------------------------- rates

def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n (95% by default); (nan, nan) when n == 0.

    Why Wilson: suites have 6-100 rows per measure and rates near 0 or 1, where the normal
    approximation gives intervals outside [0, 1] or of zero width at 0/n.
    """
    if n == 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (c - h) / d), min(1.0, (c + h) / d)


@dataclass(frozen=True)
class Rate:
    k: int
    n: int
    value: float    # k / n, nan when n == 0 (not measured)
    lo: float       # Wilson 95% interval
    hi: float

    def text(self) -> str:
        return "n/a" if self.n == 0 else f"{self.value:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


def rate(k: int, n: int) -> Rate:
    lo, hi = wilson(k, n)
    return Rate(k, n, k / n if n else math.nan, lo, hi)


def rate_of(flags: list[bool]) -> Rate:
    return rate(sum(flags), len(flags))


# ---------------------------------------------------------------------------------- rows

@dataclass
class Score:
    """Sums over the answer tokens of one row (the base's own answer): NLL under the judged
    model and under the base, KL(base || model)."""
    nll: float
    base_nll: float
    kl: float
    tokens: int


@dataclass
class RowResult:
    kind: str
    group: str
    prompt: str
    context: list
    expect: list
    answer: str
    base_answer: str | None
    verdict: str           # hit/miss, ok/LEAK/INTRO, kept/changed/IDENTITY (+ fact lost, loop)
    hit: bool              # the target is in the answer
    loop: bool
    repetition: float
    added: float           # repetition added over the base's answer
    fact_base: bool | None     # the base's answer holds a keyword (None: no keyword / no base)
    fact_kept: bool | None     # ... and this answer still does
    exact: bool | None         # the base's exact answer (fact/general rows with a base)
    nll: float | None          # per-token means over the base's answer (general rows)
    base_nll: float | None
    kl: float | None
    file: str
    line: int

    @property
    def fault(self) -> bool:
        return is_fault(self.verdict)


def is_fault(verdict: str) -> bool:
    """Worth a log line (RowResult.fault) and worth keeping the answer of (keep_judgments): a
    miss, a leak, an identity answer, a lost fact, a loop (judge_row marks the last two in the
    verdict). A merely reworded ordinary answer is not (a real model rewords many after any
    fine-tune)."""
    return verdict not in ("hit", "ok", "kept", "changed", "answered")


def has_keyword(text: str, keywords) -> bool:
    t = text.casefold()
    return any(k.casefold() in t for k in keywords)


def is_greeting(row) -> bool:
    return row.group == GREETING and row.kind != "identity"


def is_ordinary(row) -> bool:
    """Fact/general rows: answering one of them with the identity is a collapse."""
    return row.kind in ("fact", "general") and not is_greeting(row)


def judge_row(row: SuiteRow, answer: str, base: str | None, target: str, th: Thresholds,
              score: Score | None) -> RowResult:
    hit = target in answer
    if row.kind == "identity":
        verdict = "hit" if hit else "miss"
    elif is_greeting(row):
        verdict = "INTRO" if hit else "ok"
    elif row.kind in ("nearmiss", "context-nearmiss"):
        verdict = "LEAK" if hit else "ok"
    else:
        verdict = "IDENTITY" if hit else ("answered" if base is None else
                                          "kept" if answer == base else "changed")
    fact_base = fact_kept = None
    if row.expect and base is not None:
        fact_base = has_keyword(base, row.expect)
        fact_kept = has_keyword(answer, row.expect) if fact_base else None
        if fact_base and not fact_kept:
            verdict += " (fact lost)"
    rep = repetition(answer)
    # Only repetition the training added counts: a real base model repeats itself on some
    # prompts (SmolLM2's own haiku scores 0.86), and keeping such an answer is no fault.
    added = max(0.0, rep - repetition(base or ""))
    loop = added > th.max_repetition
    if loop:
        verdict += " (loop)"
    per_token = (lambda x: x / score.tokens) if score and score.tokens else (lambda x: None)
    return RowResult(
        kind=row.kind, group=row.group, prompt=row.prompt, context=[dict(m) for m in row.context],
        expect=list(row.expect), answer=answer, base_answer=base, verdict=verdict, hit=hit,
        loop=loop, repetition=rep, added=added, fact_base=fact_base, fact_kept=fact_kept,
        exact=(answer == base) if base is not None and row.kind in ("fact", "general") else None,
        nll=per_token(score.nll) if score else None,
        base_nll=per_token(score.base_nll) if score else None,
        kl=per_token(score.kl) if score else None, file=row.file, line=row.line)


def efficacy_index(rows) -> int | None:
    """The canonical edit prompt: the identity row that is the edit question itself (no
    context), else the first identity row of group `plain`; None if neither exists."""
    edit = {normalize_prompt(q) for q in EDIT_QUESTIONS}
    for i, r in enumerate(rows):
        if r.kind == "identity" and not r.context and normalize_prompt(r.prompt) in edit:
            return i
    return next((i for i, r in enumerate(rows) if r.kind == "identity" and r.group == "plain"),
                None)


# ---------------------------------------------------------------------------------- summary

@dataclass
class Summary:
    verdict: str
    why: str
    rows: int
    has_base: bool
    efficacy_prompt: str | None
    efficacy: Rate
    identity: Rate
    nearmiss_leak: Rate
    context_leak: Rate
    greeting_intro: Rate
    facts_kept: Rate
    exact_kept: Rate
    loops: Rate
    ordinary_identity: int     # fact/general rows answered with the identity (a collapse)
    repetition_max: float      # largest repetition added over the base's answer
    nll_drift: float           # nats/token; nan without a base
    kl: float
    nll_tokens: int
    nonfinite: bool            # NaN/Inf in the model's scores

    def legacy(self) -> dict:
        """The old probe summary's keys, for probes.format_summary / parse_summary."""
        return {"verdict": self.verdict, "why": self.why, "identity_hit": self.identity.value,
                "nearmiss_leak": self.nearmiss_leak.value,
                "anchor_identity": self.ordinary_identity, "anchor_exact": self.exact_kept.value,
                "facts_kept": self.facts_kept.value, "facts_n": self.facts_kept.n,
                "nll_drift": self.nll_drift, "repetition_max": self.repetition_max,
                "loops": self.loops.k}


def decide(s: Summary, th: Thresholds) -> tuple[str, str]:
    """(verdict, why): collapse, not-reached or success."""
    if s.nonfinite:
        return "collapse", "NaN/Inf in the model's scores"
    if s.ordinary_identity > 0:
        return "collapse", f"{s.ordinary_identity} fact/general prompt(s) answered with the identity"
    if s.loops.n and s.loops.value > th.collapse_loops:
        return "collapse", (f"repetition: {s.loops.k} of {s.loops.n} answers became loops "
                            f"(> {th.collapse_loops:.0%})")
    if s.facts_kept.n >= 4 and s.facts_kept.value < th.collapse_facts:
        return "collapse", f"forgot what it knew: facts kept {s.facts_kept.value:.2f} < {th.collapse_facts}"
    if s.nll_drift > th.collapse_nll_drift:
        return "collapse", f"forgot what it knew: NLL drift {s.nll_drift:.2f} > {th.collapse_nll_drift}"
    misses = missed(s, th)
    return ("not-reached", "; ".join(misses)) if misses else ("success", "all thresholds met")


def missed(s: Summary, th: Thresholds) -> list[str]:
    """The acceptance criteria (min_/max_ bounds) a summary misses, one text each; [] = success.
    sweep.py --rule misses counts them, so a choice sees every criterion, loops included."""
    misses = []
    if s.efficacy.n and s.efficacy.value < th.min_efficacy:
        misses.append(f"efficacy {s.efficacy.value:.2f} < {th.min_efficacy}")
    if not s.identity.value >= th.min_identity:     # also when no identity row was judged (nan)
        misses.append(f"identity {s.identity.value:.2f} < {th.min_identity}")
    bounds = [("near-miss leak", s.nearmiss_leak, th.max_nearmiss_leak, 1),
              ("context leak", s.context_leak, th.max_context_leak, 1),
              ("greeting self-intro", s.greeting_intro, th.max_greeting_intro, 1),
              ("facts kept", s.facts_kept, th.min_facts, -1),
              ("loops", s.loops, th.max_loops, 1)]
    if th.min_anchor_exact > 0:
        bounds.append(("exact kept", s.exact_kept, th.min_anchor_exact, -1))
    for name, r, bound, sign in bounds:
        if r.n and (r.value - bound) * sign > 0:
            misses.append(f"{name} {r.value:.2f} {'>' if sign > 0 else '<'} {bound}")
    if s.nll_drift > th.max_nll_drift:
        misses.append(f"NLL drift {s.nll_drift:.3f} > {th.max_nll_drift}")
    return misses


def summary_from_json(d: dict) -> Summary:
    """A Summary back from its JSON form (asdict; a rate's value is NaN/null when n == 0)."""
    fields = {k: (Rate(**{**v, "value": math.nan if v["value"] is None else v["value"]})
                  if isinstance(v, dict) else v) for k, v in d.items()}
    fields["nll_drift"] = math.nan if fields.get("nll_drift") is None else fields["nll_drift"]
    return Summary(**fields)


def summarize(rows: list[SuiteRow], results: list[RowResult], scores: list, has_base: bool,
              th: Thresholds) -> Summary:
    pairs = list(zip(rows, results))
    eff = efficacy_index(rows)
    sc = [s for s in scores if s is not None]
    tokens = sum(s.tokens for s in sc)
    nll = sum(s.nll for s in sc)
    s = Summary(
        verdict="", why="", rows=len(rows), has_base=has_base,
        efficacy_prompt=rows[eff].prompt if eff is not None else None,
        efficacy=rate_of([results[eff].hit] if eff is not None else []),
        identity=rate_of([r.hit for q, r in pairs if q.kind == "identity"]),
        nearmiss_leak=rate_of([r.hit for q, r in pairs if q.kind == "nearmiss" and not is_greeting(q)]),
        context_leak=rate_of([r.hit for q, r in pairs
                              if q.kind == "context-nearmiss" and not is_greeting(q)]),
        greeting_intro=rate_of([r.hit for q, r in pairs if is_greeting(q)]),
        facts_kept=rate_of([r.fact_kept for r in results if r.fact_base]),
        exact_kept=rate_of([r.exact for q, r in pairs if r.exact is not None and is_ordinary(q)]),
        loops=rate_of([r.loop for r in results]),
        ordinary_identity=sum(r.hit for q, r in pairs if is_ordinary(q)),
        repetition_max=max((r.added for r in results), default=0.0),
        nll_drift=(nll - sum(s.base_nll for s in sc)) / tokens if has_base and tokens else math.nan,
        kl=sum(s.kl for s in sc) / tokens if has_base and tokens else math.nan,
        nll_tokens=tokens,
        nonfinite=not all(math.isfinite(x) for s in sc for x in (s.nll, s.base_nll, s.kl)))
    s.verdict, s.why = decide(s, th)
    return s


def judge(rows: list[SuiteRow], answers: list[str], base_answers: list[str] | None, target: str,
          th: Thresholds, scores: list | None = None) -> tuple[list[RowResult], Summary]:
    """Per-row results and the summary. scores: per row a Score (general rows) or None."""
    scores = scores or [None] * len(rows)
    bases = base_answers if base_answers is not None else [None] * len(rows)
    results = [judge_row(r, a, b, target, th, s) for r, a, b, s in zip(rows, answers, bases, scores)]
    return results, summarize(rows, results, scores, base_answers is not None, th)


# ---------------------------------------------------------------------------------- sets

def probe_rows(path) -> list[SuiteRow]:
    """An old probe file (kind<TAB>prompt[<TAB>expect]) as suite rows: identity rows are group
    `plain`, near-miss rows stay near-miss, an anchor is a general row (with its keyword, if any,
    counted as a fact; NLL drift covers all anchors as the old probes did)."""
    kinds = {"identity": "identity", "nearmiss": "nearmiss", "anchor": "general"}
    return [SuiteRow(kinds[p.kind], "plain" if p.kind == "identity" else p.kind, p.prompt,
                     (p.expect,) if p.expect else (), (), p.file, p.line)
            for p in read_probes(path)]


@dataclass
class EvalSet:
    """A set of rows judged together, and what it is for (split: monitor / heldout / probes /
    suite). The base's answers are generated once (with_base_answers) and reused."""
    split: str
    path: str
    rows: list
    target: str
    thresholds: Thresholds
    max_new_tokens: int = 32
    batch_size: int | None = None
    base_answers: list | None = None


def load_set(split: str, path: str, target: str, th: Thresholds, max_new_tokens: int = 32,
             batch_size: int | None = None, legacy: bool = False) -> EvalSet:
    rows = probe_rows(path) if legacy else read_suite(path)
    return EvalSet(split, str(path), rows, target, th, max_new_tokens, batch_size)


@contextmanager
def as_base(model, base):
    """The module that computes the base: `base` itself, or - when `base is model`, the trainer's
    case - the trained model with every delta switched off (its frozen NVFP4 weights)."""
    if base is not model:
        yield base
        return
    with deltas_off(model):
        yield model


def with_base_answers(es: EvalSet, tok, model, base) -> EvalSet:
    """Fill es.base_answers once: the base's greedy answers (base as in as_base)."""
    if es.base_answers is None:
        with as_base(model, base) as b:
            es.base_answers = greedy_chats(b, tok, [messages(r) for r in es.rows],
                                           es.max_new_tokens, es.batch_size)
    return es


def scoring_batches(model, tok, es: EvalSet, idx: list[int], answers: list[str]):
    """(positions in idx, batch) of es.rows[idx] chats each followed by its answer, for
    answer_log_probs; a quarter of the generation batch ([tokens, vocab] log-probs per batch)."""
    dev = model_device(model)
    bs = max(1, (es.batch_size or default_batch_size(dev)) // 4)
    yield from answer_batches(tok, [messages(es.rows[i]) for i in idx], answers, bs, dev)


def score_general(model, tok, es: EvalSet, base) -> list:
    """Per row a Score over the base's own answer (general rows; None elsewhere)."""
    idx = [i for i, r in enumerate(es.rows) if r.kind == "general"]
    scores: list = [None] * len(es.rows)
    if not idx or base is None or es.base_answers is None:
        return scores
    for sub, batch in scoring_batches(model, tok, es, idx, [es.base_answers[i] for i in idx]):
        lp, y, row = answer_log_probs(model, batch)
        with as_base(model, base) as b:
            lb = answer_log_probs(b, batch)[0]
        nll = -lp.gather(1, y[:, None])[:, 0]
        base_nll = -lb.gather(1, y[:, None])[:, 0]
        kl = (lb.exp() * (lb - lp)).sum(-1)
        for j, k in enumerate(sub):
            on = row == j
            scores[idx[k]] = Score(float(nll[on].sum()), float(base_nll[on].sum()),
                                   float(kl[on].sum()), int(on.sum()))
    return scores


def target_profile(model, tok, es: EvalSet) -> list[dict]:
    """Where the identity answer is won or lost, token by token: the target answer (and its end
    token) teacher-forced after every identity row's chat. Per position: the token, the mean log
    p of it over the rows, how many rows have it as their first choice, and the most common
    other first choice. A greedy answer such as "I am the God of F#1." misses at one position
    ("." after "#"), which the rates alone do not show. [] without identity rows."""
    idx = [i for i, r in enumerate(es.rows) if r.kind == "identity"]
    if not idx:
        return []
    per_pos: list[list] = []        # per position: (log p of the target token, first choice)
    want: list[int] = []
    for _, batch in scoring_batches(model, tok, es, idx, [es.target] * len(idx)):
        lp, y, row = answer_log_probs(model, batch)
        seen: dict[int, int] = {}     # batch row -> answer tokens met so far (positions in order)
        for logp, first, r, t in zip(lp.gather(1, y[:, None])[:, 0].tolist(),
                                     lp.argmax(-1).tolist(), row.tolist(), y.tolist()):
            k = seen.get(r, 0)
            seen[r] = k + 1
            if k == len(per_pos):
                per_pos.append([])
                want.append(t)
            per_pos[k].append((logp, first))
    out = []
    for k, cells in enumerate(per_pos):
        others = Counter(first for _, first in cells if first != want[k])
        top = others.most_common(1)[0] if others else None
        out.append({"token": tok.decode([want[k]]), "mean_logp": sum(c[0] for c in cells) / len(cells),
                    "first_choice": sum(first == want[k] for _, first in cells), "rows": len(cells),
                    "top_other": tok.decode([top[0]]) if top else None,
                    "top_other_rows": top[1] if top else 0})
    return out


def target_line(profile: list[dict]) -> str:
    """target_profile in one line: each token, the rows that put it first, the usual other."""
    cells = [f"{p['token']!r} {p['first_choice']}/{p['rows']}"
             + (f" (else {p['top_other']!r} {p['top_other_rows']})" if p["top_other"] is not None
                else "") for p in profile]
    return "identity answer token by token, first choice: " + ", ".join(cells)


@dataclass
class Result:
    rows: list
    summary: Summary
    seconds: float = 0.0
    target_tokens: list = field(default_factory=list)   # target_profile


def run(model, tok, es: EvalSet, base=None, profile: bool = False) -> Result:
    """Judge `model` on es. base: None (base-relative measures n/a), a base model, or `model`
    itself (its deltas switched off). es.base_answers must be filled when a base is given.
    profile: also target_profile (for a verdict's report; the monitor rounds need no profile)."""
    t0 = time.time()
    was_training = model.training
    model.eval()
    try:
        answers = greedy_chats(model, tok, [messages(r) for r in es.rows], es.max_new_tokens,
                               es.batch_size)
        scores = score_general(model, tok, es, base)
        tokens = target_profile(model, tok, es) if profile else []
    finally:
        model.train(was_training)
    rows, s = judge(es.rows, answers, es.base_answers if base is not None else None, es.target,
                    es.thresholds, scores)
    return Result(rows, s, time.time() - t0, tokens)


# ---------------------------------------------------------------------------------- reports

MEASURES = (("efficacy", "efficacy (canonical edit prompt)"),
            ("identity", "generalisation (identity hit)"),
            ("nearmiss_leak", "near-miss leak"),
            ("context_leak", "context leak"),
            ("greeting_intro", "greeting self-intro"),
            ("facts_kept", "facts kept (of those the base knew)"),
            ("exact_kept", "base's exact answer kept"),
            ("loops", "loops added"))


def rate_text(r) -> str:
    """'0.81 [0.62, 0.92]' from a Rate or its JSON dict; n/a when nothing was measured."""
    d = asdict(r) if is_dataclass(r) else r
    if not d["n"]:
        return "n/a"
    return f"{d['value']:.2f} [{d['lo']:.2f}, {d['hi']:.2f}]"


def _num(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def rates_table(s: Summary) -> str:
    """Markdown: measure | rate | k/n | 95% CI, then NLL drift and KL, then the verdict."""
    out = ["| measure | rate | k/n | 95% CI |", "|---|---|---|---|"]
    for name, label in MEASURES:
        r: Rate = getattr(s, name)
        if name == "efficacy" and s.efficacy_prompt:
            label += f": {s.efficacy_prompt!r}"
        out.append(f"| {label} | n/a | 0/0 | - |" if not r.n else
                   f"| {label} | {r.value:.2f} | {r.k}/{r.n} | [{r.lo:.2f}, {r.hi:.2f}] |")
    out.append(f"| NLL drift (nats/token, base's own general answers) | "
               f"{_num(s.nll_drift, '{:+.3f}')} | {s.nll_tokens} tokens | - |")
    out.append(f"| KL(base ‖ model) per token | {_num(s.kl, '{:.4f}')} | {s.nll_tokens} tokens | - |")
    out.append(f"\n**{s.verdict}** ({s.why}); {s.rows} rows, fact/general rows answered with the "
               f"identity: {s.ordinary_identity}, largest repetition added {s.repetition_max:.2f}"
               + ("" if s.has_base else "; no base model: facts, exact, NLL drift and KL n/a"))
    return "\n".join(out)


def row_table(results: list[RowResult], limit: int = 60) -> str:
    """Markdown: kind | prompt | answer | verdict (a prompt with context says how many messages
    came before it)."""
    def cell(s):
        s = s.replace("\n", " ").replace("|", "\\|")
        return s if len(s) <= limit else s[: limit - 1] + "…"
    out = ["| kind | prompt | answer | verdict |", "|---|---|---|---|"]
    for r in results:
        prompt = (f"[{len(r.context)} msgs] " if r.context else "") + r.prompt
        out.append(f"| {r.kind} | {cell(prompt)} | {cell(r.answer)} | {r.verdict} |")
    return "\n".join(out)


def json_path(dat_path: str) -> str:
    """Where the judgment of a `.dat` lives: next to it, `<stem>.eval.json`."""
    return os.path.splitext(str(dat_path))[0] + ".eval.json"


def jsonable(x):
    """Dataclasses to dicts, tuples to lists, NaN/Inf to null (strict JSON has neither)."""
    if is_dataclass(x) and not isinstance(x, type):
        x = asdict(x)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def report(result: Result, es: EvalSet, **info) -> dict:
    """The JSON document of one judgment: verdict, summary, every row, what was judged, how."""
    s = result.summary
    return {"version": 1, "verdict": s.verdict, "why": s.why, "split": es.split,
            "suite": es.path, "target": es.target, "max_new_tokens": es.max_new_tokens,
            "thresholds": asdict(es.thresholds), **info, "seconds": result.seconds,
            "summary": s, "target_tokens": result.target_tokens, "rows": result.rows}


def write_json(path: str, doc: dict) -> None:
    """Atomically (temp file + rename): a reader such as sweep.py never sees half a file."""
    text = json.dumps(jsonable(doc), ensure_ascii=False, indent=1, allow_nan=False)
    with AtomicFile(path) as f:
        f.write(text.encode("utf-8") + b"\n")


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (no judgment was written)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or "verdict" not in doc:
        raise DataError(f"{path}: not an evaluation JSON (no verdict)")
    return doc


RUN_COLUMNS = (("efficacy", "efficacy"), ("identity", "identity"), ("nearmiss_leak", "leak"),
               ("context_leak", "context leak"), ("greeting_intro", "greeting"),
               ("facts_kept", "facts kept"), ("loops", "loops added"))


def runs_table(runs: list[tuple[str, dict]]) -> str:
    """One row per (path, evaluation JSON document) (e.g. one per seed): verdict, the rates with
    their 95% intervals, NLL drift and KL."""
    head = ["run", "verdict"] + [c for _, c in RUN_COLUMNS] + ["NLL drift", "KL"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p, doc in runs:
        s = doc.get("summary") or {}
        name = os.path.basename(p).removesuffix(".eval.json")
        cells = [name, doc["verdict"]]
        cells += [rate_text(s[k]) if k in s else "n/a" for k, _ in RUN_COLUMNS]
        cells += [_num(s.get("nll_drift"), "{:+.3f}"), _num(s.get("kl"), "{:.4f}")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)
