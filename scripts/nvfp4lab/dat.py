"""The original `.dat` weight file: read lazily (memory-mapped), write atomically.

Layout (original-system.md §1), no magic, no alignment, no index:
    uleb128 entry_count
    entry_count x { uleb128 key_len, key (UTF-8), uleb128 elem_type, uleb128 ndim,
                    ndim x uleb128 dim, payload: prod(dims) * elem_size bytes, little-endian }
NVFP4 weights are two entries, `<prefix>.weight.qdata` (uint8 [out, in/2]) and
`<prefix>.weight.scale` (E4M3 bytes [out, in/16]); everything else is a dense tensor.
"""
import mmap
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from .atomic import AtomicFile

# elem_type id -> (name, torch dtype, bytes per element). 100/101 are the original's custom types:
# 100 = packed FP4 bytes, 101 = FP8 E4M3FN block-scale bytes; both are handled as uint8 here.
ELEM_TYPES = {
    0: ("uint8", torch.uint8, 1),
    1: ("int8", torch.int8, 1),
    2: ("int16", torch.int16, 2),
    3: ("int32", torch.int32, 4),
    4: ("int64", torch.int64, 8),
    5: ("float16", torch.float16, 2),
    6: ("float32", torch.float32, 4),
    7: ("float64", torch.float64, 8),
    11: ("bool", torch.bool, 1),
    15: ("bfloat16", torch.bfloat16, 2),
    100: ("fp4x2", torch.uint8, 1),
    101: ("e4m3", torch.uint8, 1),
}
# The ids this project writes: NVFP4 codes as uint8 (as the user's file), block scales as E4M3
# bytes, dense tensors as float16.
ELEM_QDATA, ELEM_SCALE, ELEM_DENSE = 0, 101, 5
ELEM_TYPE_OF_DTYPE = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3,
                      torch.int64: 4, torch.float16: 5, torch.float32: 6, torch.float64: 7,
                      torch.bool: 11, torch.bfloat16: 15}
MAX_NDIM = 8
COPY_CHUNK = 8 << 20


class DatFormatError(ValueError):
    """A `.dat` file that does not follow the layout; the message names file, entry, key, offset."""

    def __init__(self, path, msg, index=None, key=None, offset=None):
        where = [str(path)]
        if index is not None:
            where.append(f"entry {index}")
        if key is not None:
            where.append(f"key {key!r}")
        if offset is not None:
            where.append(f"byte {offset}")
        super().__init__(f"{': '.join([', '.join(where), msg])}")


@dataclass(frozen=True)
class DatEntry:
    index: int
    key: str
    elem_type: int
    shape: tuple
    header_offset: int   # where the entry (its key length) starts
    data_offset: int     # where the payload starts
    nbytes: int

    @property
    def dtype(self) -> torch.dtype:
        return ELEM_TYPES[self.elem_type][1]


def nvfp4_prefix(key: str) -> str | None:
    """`a.b.weight.qdata` -> `a.b.weight` (the reader also accepts `a.b.qdata`)."""
    for suffix in (".qdata", ".scale"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


class DatFile:
    """An opened `.dat`: `entries` in file order, `tensor(key)` returns a zero-copy CPU view."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise FileNotFoundError(f"{self.path}: cannot open ({e.strerror})") from None
        with f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size == 0:
                raise DatFormatError(self.path, "empty file", offset=0)
            # ACCESS_COPY: writable copy-on-write pages, so torch can wrap them without a copy
            # and nothing we do can ever reach the file on disk.
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.entries = parse_entries(self._mm, self.size, self.path)
        self.by_key = {e.key: e for e in self.entries}

    def __contains__(self, key):
        return key in self.by_key

    def tensor(self, key: str) -> torch.Tensor:
        e = self.by_key[key]
        if e.nbytes == 0:
            return torch.empty(e.shape, dtype=e.dtype)
        raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=e.nbytes, offset=e.data_offset)
        return raw.view(e.dtype).reshape(e.shape)

    def nvfp4_prefixes(self) -> list[str]:
        """Prefixes (e.g. `model.layers.0.mlp.up_proj.weight`) stored as qdata+scale pairs."""
        return [nvfp4_prefix(e.key) for e in self.entries if e.key.endswith(".qdata")]

    def nvfp4_pair(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tensor(prefix + ".qdata"), self.tensor(prefix + ".scale")

    def stored_prefix(self, weight_key: str) -> str | None:
        """Where a weight (`a.b.weight`) is stored as an NVFP4 pair: `a.b.weight.qdata/.scale`, or
        `a.b.qdata/.scale` as the original's loader also accepts; None if it is not NVFP4 here."""
        if weight_key + ".qdata" in self.by_key:
            return weight_key
        if weight_key.endswith(".weight") and weight_key[: -len(".weight")] + ".qdata" in self.by_key:
            return weight_key[: -len(".weight")]
        return None

    def raw_bytes(self, entry: DatEntry) -> memoryview:
        """The whole entry (header + payload) exactly as stored."""
        end = entry.data_offset + entry.nbytes
        return memoryview(self._mm)[entry.header_offset:end]

    def close(self):
        self._mm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # Views handed out by tensor() may still be alive; the map is then freed with them.
        try:
            self.close()
        except BufferError:
            pass


def read_dat(path) -> DatFile:
    return DatFile(path)


def read_uleb128(buf, pos: int, end: int, err) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end:
            raise err("truncated: file ends inside a LEB128 number", pos)
        byte = buf[pos]
        pos += 1
        if shift >= 63 and byte > 1:
            raise err("LEB128 number overflows 64 bits", pos - 1)
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def encode_uleb128(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"LEB128 of a negative number {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def parse_entries(buf, size: int, path: str) -> list[DatEntry]:
    """Walk the headers; payloads are skipped, never read. Every failure is a DatFormatError."""
    index, key = None, None

    def err(msg, offset):
        return DatFormatError(path, msg, index, key, offset)

    count, pos = read_uleb128(buf, 0, size, err)
    # Every entry takes at least 4 header bytes: a larger count cannot be right.
    if count > size:
        raise err(f"entry count {count} is larger than the file could hold", 0)
    entries, seen = [], set()
    for index in range(count):
        key = None
        start = pos
        key_len, pos = read_uleb128(buf, pos, size, err)
        if key_len > size - pos:
            raise err(f"truncated: key length {key_len} runs past the end of the file", start)
        try:
            key = bytes(buf[pos:pos + key_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise err("key is not valid UTF-8", pos) from None
        pos += key_len
        if key in seen:
            raise err("duplicate key", start)
        seen.add(key)
        et_pos = pos
        elem_type, pos = read_uleb128(buf, pos, size, err)
        if elem_type not in ELEM_TYPES:
            raise err(f"unknown elemType {elem_type}", et_pos)
        ndim, pos = read_uleb128(buf, pos, size, err)
        if ndim > MAX_NDIM:
            raise err(f"ndim {ndim} is more than {MAX_NDIM}", pos)
        dims, numel = [], 1
        for _ in range(ndim):
            d, pos = read_uleb128(buf, pos, size, err)
            dims.append(d)
            numel *= d
        nbytes = numel * ELEM_TYPES[elem_type][2]
        if nbytes > size - pos:
            raise err(f"truncated: payload of {nbytes} bytes for shape {tuple(dims)} "
                      f"({ELEM_TYPES[elem_type][0]}) but only {size - pos} bytes left", pos)
        entries.append(DatEntry(index, key, elem_type, tuple(dims), start, pos, nbytes))
        pos += nbytes
    index, key = None, None
    if pos != size:
        raise err(f"{size - pos} bytes of trailing garbage after the last entry", pos)
    check_nvfp4_pairs(entries, path)
    return entries


def check_nvfp4_pairs(entries: list[DatEntry], path: str) -> None:
    by_key = {e.key: e for e in entries}
    for e in entries:
        prefix = nvfp4_prefix(e.key)
        if prefix is None:
            continue
        other = prefix + (".scale" if e.key.endswith(".qdata") else ".qdata")
        if other not in by_key:
            raise DatFormatError(path, f"has no matching {other!r}", e.index, e.key, e.header_offset)
        if e.key.endswith(".qdata"):
            s = by_key[other]
            if s.elem_type == 5:
                raise DatFormatError(path, f"scale {other!r} is stored as float16 (elemType 5): such "
                                           "files come from the original project's exports before "
                                           "2026-02-26, whose NVFP4 scales must be E4M3 bytes (101); "
                                           "export again from the base file", e.index, e.key,
                                     e.header_offset)
            if e.elem_type not in (0, 100) or s.elem_type not in (0, 101):
                raise DatFormatError(path, f"NVFP4 pair has elemTypes {e.elem_type}/{s.elem_type}; "
                                           "expected qdata 0|100 and scale 0|101",
                                     e.index, e.key, e.header_offset)
            if len(e.shape) != 2 or len(s.shape) != 2 or e.shape[0] != s.shape[0] \
                    or e.shape[1] * 2 != s.shape[1] * 16:
                raise DatFormatError(path, f"qdata {e.shape} and scale {s.shape} do not describe "
                                           "one [out, in] weight", e.index, e.key, e.header_offset)


def entry_header(key: str, elem_type: int, shape) -> bytes:
    kb = key.encode("utf-8")
    parts = [encode_uleb128(len(kb)), kb, encode_uleb128(elem_type), encode_uleb128(len(shape))]
    parts += [encode_uleb128(int(d)) for d in shape]
    return b"".join(parts)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def write_dat(dst, entries: Iterable[tuple[str, int, torch.Tensor]], count: int | None = None) -> None:
    """Write a new `.dat` from (key, elem_type, tensor) triples, atomically.

    `entries` may be a generator (converters stream one tensor at a time); the file starts with
    the entry count, so a generator needs `count`. Writing a different number is an error.
    """
    if count is None:
        if isinstance(entries, Iterator):
            raise ValueError(f"{dst}: write_dat needs count= for a generator of entries")
        entries = list(entries)
        count = len(entries)
    seen = set()
    with AtomicFile(dst) as f:
        f.write(encode_uleb128(count))
        for key, elem_type, t in entries:
            if key in seen:
                raise ValueError(f"{dst}: duplicate key {key!r}")
            seen.add(key)
            if elem_type not in ELEM_TYPES:
                raise ValueError(f"{dst}: key {key!r}: unknown elemType {elem_type}")
            if t.dtype != ELEM_TYPES[elem_type][1]:
                raise ValueError(f"{dst}: key {key!r}: tensor dtype {t.dtype} does not match "
                                 f"elemType {elem_type} ({ELEM_TYPES[elem_type][0]})")
            f.write(entry_header(key, elem_type, t.shape))
            f.write(tensor_bytes(t))
        if len(seen) != count:
            raise ValueError(f"{dst}: {len(seen)} entries written, {count} announced")


def same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def export_dat(src: DatFile, dst, replacements: dict[str, torch.Tensor]) -> None:
    """Copy `src` to `dst` in the same entry order, swapping in `replacements` by key.

    Replaced entries keep key, elemType and shape (anything else is an error); every other entry
    is copied byte for byte. Refuses to write over its own input.
    """
    if same_file(src.path, dst):
        raise ValueError(f"{dst}: refusing to write over the input file {src.path}")
    unknown = set(replacements) - set(src.by_key)
    if unknown:
        raise KeyError(f"{dst}: replacement keys not in {src.path}: {sorted(unknown)[:5]}")
    for key, t in replacements.items():
        e = src.by_key[key]
        if tuple(t.shape) != e.shape:
            raise ValueError(f"{dst}: key {key!r}: new shape {tuple(t.shape)} != stored {e.shape}")
        if t.dtype != e.dtype:
            raise ValueError(f"{dst}: key {key!r}: new dtype {t.dtype} != stored "
                             f"{ELEM_TYPES[e.elem_type][0]} (elemType {e.elem_type})")
    with AtomicFile(dst) as f:
        f.write(encode_uleb128(len(src.entries)))
        for e in src.entries:
            if e.key in replacements:
                f.write(entry_header(e.key, e.elem_type, e.shape))
                f.write(tensor_bytes(replacements[e.key]))
            else:
                view = src.raw_bytes(e)
                for i in range(0, len(view), COPY_CHUNK):
                    f.write(view[i:i + COPY_CHUNK])


def summarize(dat: DatFile) -> dict:
    """Entry count, bytes per elemType, NVFP4 prefixes and model dims inferred from shapes."""
    by_type = {}
    for e in dat.entries:
        name = ELEM_TYPES[e.elem_type][0]
        n, b = by_type.get((e.elem_type, name), (0, 0))
        by_type[(e.elem_type, name)] = (n + 1, b + e.nbytes)
    prefixes = dat.nvfp4_prefixes()
    dims = {}
    emb = dat.by_key.get("model.embed_tokens.weight")
    if emb is not None and len(emb.shape) == 2:
        dims["vocab_size"], dims["hidden_size"] = emb.shape
    layers = {int(k.split(".")[2]) for k in dat.by_key if k.startswith("model.layers.")}
    if layers:
        dims["num_hidden_layers"] = max(layers) + 1
    up = dat.by_key.get("model.layers.0.mlp.up_proj.weight.qdata")
    if up is not None:
        dims["intermediate_size"] = up.shape[0]
    for name, key in (("q_out", "model.layers.0.self_attn.q_proj.weight.qdata"),
                      ("kv_out", "model.layers.0.self_attn.k_proj.weight.qdata")):
        if key in dat.by_key:
            dims[name] = dat.by_key[key].shape[0]
    return {"path": dat.path, "bytes": dat.size, "entries": len(dat.entries),
            "elem_types": by_type, "nvfp4": prefixes, "dims": dims, "scales": scale_floor_stats(dat)}


SCALE_FLOOR_BYTE = 0x08   # e4m3 2^-6, torchao's smallest block scale (finfo(float8_e4m3fn).tiny)


def scale_floor_stats(dat: DatFile) -> dict:
    """How the NVFP4 block scales sit against torchao's 2^-6 floor, and who likely wrote the file.

    torchao's to_nvfp4 (the user's quantize_qwen3_to_nvfp4.py) never writes a scale below 2^-6
    and, for Qwen3-sized weights, puts most blocks exactly on it; a quantizer with a lower floor
    (THSFP4's 2^-16, this project's converter before 2026-11-29) writes subnormal scales instead.
    """
    counts = torch.zeros(256, dtype=torch.int64)
    for e in dat.entries:
        if e.key.endswith(".scale") and e.nbytes:
            counts += torch.bincount(dat.tensor(e.key).reshape(-1).view(torch.uint8), minlength=256)
    mag = counts[:128] + counts[128:]          # sign bit ignored
    total = int(counts.sum())
    at, below = int(mag[SCALE_FLOOR_BYTE]), int(mag[:SCALE_FLOOR_BYTE].sum())
    if total == 0:
        producer = "no NVFP4 scales"
    elif below:
        producer = "not torchao: scales below 2^-6 (a 2^-16-floor quantizer such as THSFP4)"
    elif at:
        producer = "torchao-style (to_nvfp4: scale floor 2^-6)"
    else:
        producer = "unknown (no block at or below 2^-6)"
    return {"blocks": total, "at_floor": at, "below_floor": below, "producer": producer}
