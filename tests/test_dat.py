"""`.dat` files: the original layout both ways, atomic writes, and one clear error for bad input."""
import hashlib
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from nvfp4lab.dat import (DatFormatError, encode_uleb128, export_dat, read_dat, summarize,
                          write_dat)
from nvfp4lab.nvfp4_ref import quantize_ref


def uleb(n: int) -> bytes:
    """LEB128 written independently of the module under test (the spec, by hand)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def hand_entry(key: str, elem_type: int, dims, payload: bytes) -> bytes:
    k = key.encode("utf-8")
    return uleb(len(k)) + k + uleb(elem_type) + uleb(len(dims)) + b"".join(map(uleb, dims)) + payload


def spec_file(tmp_path) -> tuple:
    """A small file built from the original's rules, with a 200-byte key (2-byte LEB128)."""
    emb = struct.pack("<6e", 0.5, -1.0, 2.0, 0.25, 0.0, 3.0)                   # float16 [3, 2]
    norm = struct.pack("<2f", 1.0, -2.5)                                       # float32 [2]
    q = bytes([0x21, 0x8F] * 8)                                                # 32 codes
    s = bytes([0x38, 0x40])                                                    # e4m3 1.0, 2.0
    long_key = "model." + "x" * 194
    entries = [hand_entry("model.embed_tokens.weight", 5, [3, 2], emb),
               hand_entry("model.norm.weight", 6, [2], norm),
               hand_entry("lm_head.weight.qdata", 100, [1, 16], q),
               hand_entry("lm_head.weight.scale", 101, [1, 2], s),
               hand_entry(long_key, 15, [1], struct.pack("<H", 0x3F80))]       # bf16 1.0
    raw = uleb(len(entries)) + b"".join(entries)
    path = tmp_path / "spec.dat"
    path.write_bytes(raw)
    return path, raw, long_key


def test_reads_a_file_written_by_the_original_rules(tmp_path):
    path, raw, long_key = spec_file(tmp_path)
    dat = read_dat(path)
    assert [e.key for e in dat.entries][:4] == ["model.embed_tokens.weight", "model.norm.weight",
                                                "lm_head.weight.qdata", "lm_head.weight.scale"]
    assert dat.tensor("model.embed_tokens.weight").tolist() == [[0.5, -1.0], [2.0, 0.25], [0.0, 3.0]]
    assert dat.tensor("model.norm.weight").tolist() == [1.0, -2.5]
    assert dat.tensor(long_key).item() == 1.0
    assert dat.nvfp4_prefixes() == ["lm_head.weight"]
    from nvfp4lab.nvfp4_ref import dequantize_ref
    w = dequantize_ref(*dat.nvfp4_pair("lm_head.weight"))
    # byte 0x21: low nibble code 1 (0.5), high nibble 2 (1.0); 0x8F: code 15 (-6), code 8 (-0)
    assert w[0, :4].tolist() == [0.5, 1.0, -6.0, -0.0]
    assert w[0, 16:20].tolist() == [1.0, 2.0, -12.0, -0.0]  # second block of 16, scale 2.0
    s = summarize(dat)
    assert s["entries"] == 5 and s["dims"]["vocab_size"] == 3


def test_round_trip_is_byte_identical_and_replacement_touches_only_its_bytes(tmp_path):
    path, raw, _ = spec_file(tmp_path)
    dat = read_dat(path)
    export_dat(dat, tmp_path / "same.dat", {})
    assert (tmp_path / "same.dat").read_bytes() == raw
    new = torch.tensor([7.0, 8.0])
    export_dat(dat, tmp_path / "one.dat", {"model.norm.weight": new})
    out = (tmp_path / "one.dat").read_bytes()
    e = dat.by_key["model.norm.weight"]
    assert len(out) == len(raw)
    assert out[:e.data_offset] == raw[:e.data_offset]
    assert out[e.data_offset + 8:] == raw[e.data_offset + 8:]
    assert out[e.data_offset:e.data_offset + 8] == struct.pack("<2f", 7.0, 8.0)


def test_writer_checks_shape_dtype_and_never_overwrites_its_input(tmp_path):
    path, raw, _ = spec_file(tmp_path)
    dat = read_dat(path)
    with pytest.raises(ValueError, match="shape"):
        export_dat(dat, tmp_path / "x.dat", {"model.norm.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="dtype"):
        export_dat(dat, tmp_path / "x.dat", {"model.norm.weight": torch.zeros(2, dtype=torch.float16)})
    with pytest.raises(ValueError, match="refusing"):
        export_dat(dat, path, {})
    assert path.read_bytes() == raw
    assert not (tmp_path / "x.dat").exists()
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]


def test_failed_write_leaves_no_partial_file(tmp_path):
    def entries():
        yield "a", 6, torch.zeros(2)
        raise RuntimeError("disk full, say")
    with pytest.raises(RuntimeError):
        write_dat(tmp_path / "out.dat", entries(), count=2)
    assert os.listdir(tmp_path) == []


def test_streaming_writer_equals_list_writer(tmp_path):
    q, s = quantize_ref(torch.randn(4, 32))
    items = [("w.weight.qdata", 0, q), ("w.weight.scale", 101, s), ("n", 5, torch.ones(3).half())]
    write_dat(tmp_path / "a.dat", items)
    write_dat(tmp_path / "b.dat", iter(items), count=len(items))
    assert (tmp_path / "a.dat").read_bytes() == (tmp_path / "b.dat").read_bytes()


@pytest.mark.parametrize("mutate,needle", [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\x00", "trailing garbage"),
    (lambda b: b"\xff" * 11, "overflow"),
    (lambda b: uleb(1) + hand_entry("k", 42, [1], b"\x00"), "unknown elemType 42"),
    (lambda b: uleb(2) + hand_entry("k", 0, [1], b"\x00") * 2, "duplicate key"),
    (lambda b: uleb(1) + hand_entry("a.weight.qdata", 0, [1, 8], b"\x00" * 8), "no matching"),
    (lambda b: uleb(1) + uleb(2) + b"\xff\xfe" + uleb(0) + uleb(0), "UTF-8"),
    (lambda b: uleb(1) + hand_entry("k", 6, [10 ** 12], b""), "truncated"),
    (lambda b: uleb(10 ** 9), "larger than the file"),
    (lambda b: b"", "empty"),
])
def test_bad_files_give_one_clear_error(tmp_path, mutate, needle):
    _, raw, _ = spec_file(tmp_path)
    bad = tmp_path / "bad.dat"
    bad.write_bytes(mutate(raw))
    with pytest.raises(DatFormatError) as e:
        read_dat(bad)
    msg = str(e.value)
    assert needle in msg and str(bad) in msg and "\n" not in msg


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.dat"):
        read_dat(tmp_path / "nope.dat")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_raise_only_dat_format_error(tmp_path, data):
    _, raw, _ = spec_file(tmp_path)
    b = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del b[i:]
        else:
            b[i:i] = bytes(data.draw(st.lists(st.integers(0, 255), max_size=4)))
    f = tmp_path / f"fuzz-{hashlib.sha1(bytes(b)).hexdigest()[:8]}.dat"
    f.write_bytes(bytes(b))
    try:
        dat = read_dat(f)
        for e in dat.entries:
            dat.tensor(e.key)
    except DatFormatError:
        pass


def test_uleb128_encoder_matches_the_spec():
    for n in (0, 1, 127, 128, 300, 2 ** 35 + 7):
        assert encode_uleb128(n) == uleb(n)
