"""batch_decode.BatchDecoder (the decoder of suites, probes and replay): a left-padded batch
gives each chat the tokens transformers.generate gives it alone (CPU, eager step; the CUDA
graph replays the same step)."""
import pytest
import torch

from test_decode import reference_greedy as alone
from test_runners import untie_with_random_head
from nvfp4lab import chat
from nvfp4lab.batch_decode import BatchDecoder
from nvfp4lab.dat import read_dat
from nvfp4lab.generate import greedy_chats
from nvfp4lab.model import load_model

PROMPTS = ["你是誰", "1+1等於多少？請一步一步說明。", "hi",
           "Write a long story about a cat and a dog who became friends in the city."]


@pytest.fixture(scope="module")
def varied(tiny_qwen, tmp_path_factory):
    """The tiny model with its own random head: its greedy answers depend on the context."""
    tiny_dir, tiny_dat = tiny_qwen
    out = tmp_path_factory.mktemp("varied")
    dat = untie_with_random_head(tiny_dir, tiny_dat, out)
    return load_model(read_dat(str(dat)), str(out), "cpu", torch.float32), chat.load_tokenizer(str(out))


def test_left_padded_batch_gives_each_chat_its_own_greedy_tokens(varied):
    model, tok = varied
    enc = [chat.encode_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    assert len({len(e) for e in enc}) == len(enc)              # every row padded differently
    dec = BatchDecoder(model, rows=len(enc) + 1, capacity=max(map(len, enc)) + 10)  # a spare row
    got = dec.greedy(enc, 10, stops=[], pad=0)
    want = [alone(model, e, 10) for e in enc]
    assert got == want
    assert len({tuple(g) for g in got}) == len(got)            # answers differ: not a fluke


def test_rows_stop_at_their_own_stop_token_and_the_batch_ends_with_the_last(varied):
    model, tok = varied
    enc = [chat.encode_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS[:3]]
    free = [alone(model, e, 8) for e in enc]
    stop = free[0][2]                                          # pretend row 0's third token stops
    got = BatchDecoder(model, 3, max(map(len, enc)) + 8).greedy(enc, 8, stops=[stop], pad=0)
    for g, f in zip(got, free):
        assert g == (f[:f.index(stop) + 1] if stop in f else f)
    ahead = BatchDecoder(model, 3, max(map(len, enc)) + 8)
    ahead.lookahead = 3                        # the GPU reads a step behind; deeper here
    assert ahead.greedy(enc, 8, stops=[stop], pad=0) == got
    with pytest.raises(ValueError, match="cannot hold"):
        BatchDecoder(model, 2, 64).greedy(enc, 8, stops=[], pad=0)


def test_greedy_chats_answers_in_input_order_whatever_the_batch_size(varied):
    model, tok = varied
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    one = greedy_chats(model, tok, chats, 6, batch_size=1)
    assert greedy_chats(model, tok, chats, 6, batch_size=3) == one
    end = chat.end_tokens(tok)
    for c, a in zip(chats, one):
        assert a == tok.decode(end.cut(alone(model, chat.encode_chat(tok, c), 6)),
                               skip_special_tokens=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_captured_step_gives_the_same_tokens(varied):
    """The CUDA graph replays the eager step: the same tokens as generate on each chat alone."""
    model, tok = varied
    model = model.cuda()
    enc = [chat.encode_chat(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    dec = BatchDecoder(model, len(enc), 128)
    got = dec.greedy(enc, 10, stops=[], pad=0)
    assert dec.graph is not None, dec.graph_note
    want = []
    for e in enc:
        ids = torch.tensor([e], device="cuda")
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=10, min_new_tokens=10, eos_token_id=None,
                             pad_token_id=0, temperature=None, top_p=None, top_k=None)
        want.append(out[0, len(e):].tolist())
    model.cpu()
    assert got == want


def test_greedy_chats_reuses_one_decoder_while_the_capacity_stays(varied, monkeypatch):
    """Batches of one call share a decoder (and on CUDA its captured graph) while their capacity
    and rows are the same; on CUDA a short last batch runs in the spare rows, on the CPU it gets
    its own decoder (a spare row is pure cost there). The answers stay each chat's own."""
    import nvfp4lab.generate as generate
    model, tok = varied
    made = []

    class Counted(BatchDecoder):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append((self.rows, self.capacity))
    monkeypatch.setattr(generate, "BatchDecoder", Counted)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:3] + ["hello", "1+1?"]]
    got = greedy_chats(model, tok, chats, 5, batch_size=2)      # batches of 2, 2 and 1
    assert made == [(2, 64), (1, 64)]                          # the model is on the CPU here
    assert got == greedy_chats(model, tok, chats, 5, batch_size=1)
