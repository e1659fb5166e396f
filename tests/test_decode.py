"""The runners' static-cache greedy decoder gives transformers.generate's tokens (CPU, eager step;
the CUDA-graph replay of the same step is checked on the GPU by scripts/gpu_check.py)."""
import pytest
import torch

from nvfp4lab import chat
from nvfp4lab.dat import read_dat
from nvfp4lab.decode import StaticDecoder
from nvfp4lab.model import load_model


def reference_greedy(model, ids, n):
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                         pad_token_id=0, temperature=None, top_p=None, top_k=None)
    return out[0, len(ids):].tolist()


def test_static_decoder_matches_generate_across_growth_and_prefix_reuse(tiny_qwen):
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    # capacity 8 is smaller than any prompt: every call below has to grow the cache first
    dec = StaticDecoder(model, capacity=8)
    first = chat.encode_prompt(tok, [], "你是誰")
    new, stamps = dec.greedy(first, 10, stops=[])
    assert new == reference_greedy(model, first, 10)
    assert len(stamps) == 10 and dec.capacity >= len(first) + 10
    assert dec.cached_length() == len(first) + 9          # the last token was never fed

    # A second turn that extends the first: with reuse only the tail is prefilled, and the
    # tokens equal both a fresh decoder and generate over the whole context.
    second = first + new + chat.encode_prompt(tok, [], "continue.")
    reused, _ = dec.greedy(second, 8, stops=[], reuse_prefix=True)
    fresh, _ = StaticDecoder(model).greedy(second, 8, stops=[])
    assert reused == fresh == reference_greedy(model, second, 8)


def test_static_decoder_stops_at_a_stop_token(tiny_qwen):
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    ids = chat.encode_prompt(tok, [], "1+1等於多少？")
    free_run, _ = StaticDecoder(model).greedy(ids, 6, stops=[])
    stop = free_run[2]                                     # pretend the third token is a stop
    new, _ = StaticDecoder(model).greedy(ids, 6, stops=[stop])
    assert new == free_run[:free_run.index(stop) + 1]


def test_compiled_decode_step_gives_the_eager_steps_tokens(tiny_qwen):
    """compile_step=True (torch.compile of the one-token forward, the NVFP4 op opaque to it)
    decodes the same greedy tokens as the eager step; on CUDA the compiled step is what gets
    captured (bench.py measures it on the H200)."""
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    ids = chat.encode_prompt(tok, [], "你是誰")
    eager, _ = StaticDecoder(model).greedy(ids, 8, stops=[])
    torch._dynamo.reset()
    compiled, _ = StaticDecoder(model, compile_step=True).greedy(ids, 8, stops=[])
    torch._dynamo.reset()
    assert compiled == eager


def test_reading_tokens_steps_behind_the_decoder_changes_no_token(tiny_qwen):
    """On the GPU the host reads each token a step behind (decode.TokenPipe) so the next step is
    already queued; a step run past a stop or into the next turn's prefix must change nothing.
    Forced here on the CPU with a deeper lookahead than the GPU's."""
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    ids = chat.encode_prompt(tok, [], "你是誰")
    plain, _ = StaticDecoder(model).greedy(ids, 9, stops=[])
    ahead = StaticDecoder(model)
    ahead.lookahead = 3
    stop = plain[3]
    new, stamps = ahead.greedy(ids, 9, stops=[stop])
    assert new == plain[:plain.index(stop) + 1] and len(stamps) == len(new)
    assert stamps == sorted(stamps)
    # the steps run past the stop left keys in the cache: the next turn reuses only the prefix
    second = ids + new + chat.encode_prompt(tok, [], "continue.")
    again, _ = ahead.greedy(second, 6, stops=[], reuse_prefix=True)
    assert again == StaticDecoder(model).greedy(second, 6, stops=[])[0]
    assert ahead.greedy(ids, 1, stops=[])[0] == plain[:1]


def test_padded_prefill_gives_the_unpadded_tokens(tiny_qwen):
    """On CUDA a prompt is padded to its PREFILL_BUCKETS length so that its prefill can be one
    graph replay; the pad rows must change no token: fresh prompts of several lengths, a
    reused prefix whose tail is padded, and a prompt whose bucket would pass the cache's end
    (then it runs eagerly at its own length). Forced here on the CPU without graphs."""
    from nvfp4lab.decode import PREFILL_BUCKETS, prefill_bucket
    assert prefill_bucket(1, 0, 256) == 16 and prefill_bucket(17, 0, 256) == 32
    assert prefill_bucket(17, 240, 256) is None and prefill_bucket(300, 0, 512) == 512
    assert prefill_bucket(300, 0, 511) is None and prefill_bucket(2049, 0, 4096) is None
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    padded = StaticDecoder(model)
    padded.pad_prefill = True
    for question in ("你是誰", "1+1等於多少？請一步一步地解釋你的推理過程，然後給出答案。"):
        ids = chat.encode_prompt(tok, [], question)
        plain, _ = StaticDecoder(model).greedy(ids, 8, stops=[])
        assert padded.greedy(ids, 8, stops=[])[0] == plain == reference_greedy(model, ids, 8)
        assert set(padded.prefill_slots) <= set(PREFILL_BUCKETS)
        # the next turn: only the new tail is prefilled (padded), after the cached prefix
        second = ids + plain + chat.encode_prompt(tok, [], "continue.")
        assert (padded.greedy(second, 6, stops=[], reuse_prefix=True)[0]
                == StaticDecoder(model).greedy(second, 6, stops=[])[0])
    assert len(padded.prefill_slots) >= 2
    # a bucket past the cache's end: the prefill runs unpadded
    long_ids = chat.encode_prompt(tok, [], "請寫一首關於秋天的詩。" * 12)
    near_end = StaticDecoder(model, capacity=len(long_ids) + 4)
    near_end.pad_prefill = True
    assert prefill_bucket(len(long_ids), 0, near_end.capacity) is None
    assert near_end.greedy(long_ids, 4, stops=[])[0] == reference_greedy(model, long_ids, 4)
    # a prompt past 256 tokens: padded to the 512 bucket (the cache grows to 512 for it)
    longer = chat.encode_prompt(tok, [], "請寫一首關於秋天的詩。" * 40)
    assert 256 < len(longer) <= 508
    big = StaticDecoder(model)
    big.pad_prefill = True
    assert big.greedy(longer, 4, stops=[])[0] == reference_greedy(model, longer, 4)
    assert set(big.prefill_slots) == {512}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_prefill_gives_the_eager_tokens(tiny_qwen):
    """On CUDA a bucket's prefill is captured at its second use and replayed from the third on:
    every call, prefix reuse included, gives the tokens of a decoder without graphs."""
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cuda", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    ids = chat.encode_prompt(tok, [], "你是誰")
    eager = StaticDecoder(model, use_graph=False)
    graphed = StaticDecoder(model)
    for k in range(3):
        prompt = ids if k != 1 else chat.encode_prompt(tok, [], "1+1等於多少？")
        assert graphed.greedy(prompt, 8, stops=[])[0] == eager.greedy(prompt, 8, stops=[])[0]
    assert any(s.graph is not None for s in graphed.prefill_slots.values())
    turn = ids + eager.greedy(ids, 8, stops=[])[0] + chat.encode_prompt(tok, [], "continue.")
    for _ in range(3):
        assert (graphed.greedy(turn, 6, stops=[], reuse_prefix=True)[0]
                == eager.greedy(turn, 6, stops=[])[0])
