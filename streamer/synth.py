"""Synthetic safetensors models for tests and benchmarks, with no torch dependency.

Two kinds of model, both written as a Hugging Face style model directory::

    <dest>/
        config.json                         LlamaForCausalLM-shaped config
        generation_config.json
        tokenizer.json                      small, valid `tokenizers` JSON (WordLevel)
        tokenizer_config.json
        special_tokens_map.json
        model-00001-of-00004.safetensors    shards (a single shard is `model.safetensors`)
        ...
        model.safetensors.index.json        metadata.total_size + weight_map (only if sharded)

* :func:`llama` describes a small Llama with the real tensor names
  (``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``, ...,
  ``lm_head.weight``) and seeded random values; :func:`llama_tensor` recomputes any
  tensor's exact bytes so tests can compare bit for bit.
* :func:`sized` describes a model of a given byte size made of a few large tensors per
  shard. It is written streaming in 64 MiB blocks (bounded memory, a few seconds for a few
  GiB); each block is distinct and never all zeros, so a misplaced or corrupted range is
  detectable.

The safetensors format is written directly: an 8-byte little-endian header length, a JSON
header (``dtype``, ``shape``, ``data_offsets`` per tensor and ``__metadata__``) padded with
spaces to a multiple of 8 bytes, then the tensor data. Reading a header back goes through
the library's own reader (:mod:`streamer.safetensors`), sizes through
:func:`streamer.sizes.parse_size`.

The generator is a test and benchmark kit, not part of the library: it needs numpy, which
the core install does not bring (``pip install 'weightstream[synth]'``; the ``test`` and
``bench`` extras include it), and no core module imports it
(``tests/unit/test_core_imports.py``). It is one module of about 600 lines on purpose:
one optional kit, read top to bottom in commented sections (specs, tensor plans, the
Llama and sized data, writing, the command line).

Command line::

    python -m streamer.synth DIR --size 2GiB --shards 4
    python -m streamer.synth DIR --llama --hidden 256 --layers 4 --dtype bf16 --shards 2
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import safetensors
from .sizes import parse_size

try:
    import numpy as np
except ImportError as e:  # not a core dependency
    raise ImportError(
        "streamer.synth needs numpy: pip install 'weightstream[synth]'"
    ) from e

__all__ = [
    "LlamaSpec",
    "SizedSpec",
    "SynthModel",
    "TensorPlan",
    "generate",
    "llama",
    "llama_tensor",
    "parse_size",
    "read_safetensors_header",
    "shard_names",
    "sized",
]

_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "U8": 1}
_DTYPE_ALIASES = {
    "bf16": "BF16", "bfloat16": "BF16",
    "f16": "F16", "fp16": "F16", "float16": "F16",
    "f32": "F32", "fp32": "F32", "float32": "F32",
}
_TORCH_DTYPE = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
_BLOCK_BYTES = 64 << 20
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def _canonical_dtype(dtype: str) -> str:
    try:
        return _DTYPE_ALIASES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}: use bf16, f16 or f32") from None


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, kw_only=True)
class LlamaSpec:
    """A small Llama-shaped model with real tensor names and seeded random values."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    vocab_size: int = 256
    intermediate_size: int = 128
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    dtype: str = "BF16"
    shards: int = 2
    seed: int = 0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _canonical_dtype(self.dtype))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.shards < 1:
            raise ValueError("shards must be >= 1")
        if self.vocab_size < len(_SPECIAL_TOKENS):
            raise ValueError("vocab_size too small")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True, kw_only=True)
class SizedSpec:
    """A model of about ``total_bytes`` of tensor data, a few large tensors per shard."""

    total_bytes: int
    shards: int = 4
    dtype: str = "BF16"
    seed: int = 0
    max_tensor_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _canonical_dtype(self.dtype))
        if self.shards < 1:
            raise ValueError("shards must be >= 1")
        if self.total_bytes < self.shards * 16:
            raise ValueError("total_bytes too small for the number of shards")
        if self.max_tensor_bytes < 1 << 10:
            raise ValueError("max_tensor_bytes must be >= 1 KiB")


def llama(
    *,
    hidden: int = 64,
    layers: int = 2,
    vocab: int = 256,
    intermediate: int | None = None,
    heads: int | None = None,
    kv_heads: int | None = None,
    dtype: str = "bf16",
    shards: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> LlamaSpec:
    """Describe a small Llama model (see :class:`LlamaSpec`); write it with :func:`generate`.

    Args:
        hidden: hidden_size.
        layers: num_hidden_layers.
        vocab: vocab_size.
        intermediate: intermediate_size (default ``2 * hidden``).
        heads: attention heads (default: ``hidden // 16``, at least 1).
        kv_heads: key/value heads (default: ``heads // 2`` when even, else ``heads``).
        dtype: ``bf16``, ``f16`` or ``f32``.
        shards: number of safetensors files.
        seed: seed for the tensor values.
        tie_word_embeddings: omit ``lm_head.weight`` when true.
    """
    heads = heads or max(1, hidden // 16)
    if kv_heads is None:
        kv_heads = heads // 2 if heads % 2 == 0 else heads
    return LlamaSpec(
        hidden_size=hidden,
        num_hidden_layers=layers,
        vocab_size=vocab,
        intermediate_size=intermediate or 2 * hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        dtype=dtype,
        shards=shards,
        seed=seed,
        tie_word_embeddings=tie_word_embeddings,
    )


def sized(
    total_bytes: int | str,
    *,
    shards: int = 4,
    dtype: str = "bf16",
    seed: int = 0,
    max_tensor_bytes: int = 256 << 20,
) -> SizedSpec:
    """Describe a model of about ``total_bytes`` of tensor data (``int`` or ``"2GiB"``)."""
    if isinstance(total_bytes, str):
        total_bytes = parse_size(total_bytes)
    return SizedSpec(
        total_bytes=total_bytes,
        shards=shards,
        dtype=dtype,
        seed=seed,
        max_tensor_bytes=max_tensor_bytes,
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TensorPlan:
    """One tensor as laid out in a shard."""

    name: str
    dtype: str  # safetensors dtype string: BF16, F16, F32, U8
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = _DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True, kw_only=True)
class SynthModel:
    """What :func:`generate` wrote."""

    path: Path
    shards: tuple[str, ...]  # shard file names, in order
    files: tuple[str, ...]  # every file written (relative names), sorted
    weight_map: Mapping[str, str]  # tensor name -> shard file name
    total_size: int  # tensor data bytes (index metadata.total_size)
    spec: LlamaSpec | SizedSpec

    @property
    def file_bytes(self) -> int:
        """Bytes on disk over all files."""
        return sum((self.path / f).stat().st_size for f in self.files)


def shard_names(count: int) -> tuple[str, ...]:
    """Hugging Face shard names: ``model.safetensors`` alone, else ``model-0000i-of-0000N``."""
    if count == 1:
        return ("model.safetensors",)
    return tuple(f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1))


# --------------------------------------------------------------------------- llama


def _llama_plan(spec: LlamaSpec) -> list[TensorPlan]:
    h, kv = spec.hidden_size, spec.num_key_value_heads * spec.head_dim
    i, v, dt = spec.intermediate_size, spec.vocab_size, spec.dtype
    plan = [TensorPlan("model.embed_tokens.weight", dt, (v, h))]
    for n in range(spec.num_hidden_layers):
        p = f"model.layers.{n}."
        plan += [
            TensorPlan(p + "input_layernorm.weight", dt, (h,)),
            TensorPlan(p + "self_attn.q_proj.weight", dt, (h, h)),
            TensorPlan(p + "self_attn.k_proj.weight", dt, (kv, h)),
            TensorPlan(p + "self_attn.v_proj.weight", dt, (kv, h)),
            TensorPlan(p + "self_attn.o_proj.weight", dt, (h, h)),
            TensorPlan(p + "post_attention_layernorm.weight", dt, (h,)),
            TensorPlan(p + "mlp.gate_proj.weight", dt, (i, h)),
            TensorPlan(p + "mlp.up_proj.weight", dt, (i, h)),
            TensorPlan(p + "mlp.down_proj.weight", dt, (h, i)),
        ]
    plan.append(TensorPlan("model.norm.weight", dt, (h,)))
    if not spec.tie_word_embeddings:
        plan.append(TensorPlan("lm_head.weight", dt, (v, h)))
    return plan


def _to_dtype_bytes(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values -> array whose raw bytes are the safetensors encoding of ``dtype``."""
    if dtype == "F32":
        return values.astype("<f4")
    if dtype == "F16":
        return values.astype("<f2")
    # bfloat16: the top 16 bits of float32, rounded to nearest even.
    u = values.astype("<f4").view("<u4")
    rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype("<u2")


def llama_tensor(spec: LlamaSpec, name: str) -> np.ndarray:
    """Recompute one tensor of a :func:`llama` model.

    Returns a numpy array with the tensor's shape whose ``tobytes()`` is exactly what is
    stored: float16/float32 for F16/F32, and ``uint16`` bit patterns for BF16 (numpy has no
    bfloat16).

    Raises:
        KeyError: ``name`` is not a tensor of this model.
    """
    by_name = {t.name: t for t in _llama_plan(spec)}
    t = by_name[name]
    rng = np.random.default_rng([spec.seed, zlib.crc32(name.encode())])
    values = rng.standard_normal(t.shape, dtype=np.float32) * np.float32(0.02)
    if name.endswith("norm.weight"):
        values += np.float32(1.0)
    return _to_dtype_bytes(values, t.dtype)


def _split_contiguous(sizes: list[int], parts: int) -> list[range]:
    """Split item indices into ``parts`` contiguous, non-empty, roughly byte-balanced runs."""
    if parts > len(sizes):
        raise ValueError(f"cannot make {parts} shards from {len(sizes)} tensors")
    total, out, start, acc = sum(sizes), [], 0, 0
    for idx, size in enumerate(sizes):
        acc += size
        left_items, left_parts = len(sizes) - idx - 1, parts - len(out) - 1
        boundary = acc >= total * (len(out) + 1) / parts
        if left_parts and (boundary or left_items == left_parts):
            out.append(range(start, idx + 1))
            start = idx + 1
    out.append(range(start, len(sizes)))
    return out


# --------------------------------------------------------------------------- writing


def _header_bytes(tensors: list[TensorPlan], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_shard(path: Path, tensors: list[TensorPlan], data: Iterator[bytes | memoryview]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_header_bytes(tensors, {"format": "pt"}))
        for chunk in data:
            f.write(chunk)
    tmp.replace(path)


def read_safetensors_header(path: Path | str) -> tuple[int, dict]:
    """Return ``(data_start, header_dict)`` of a safetensors file (for tests and tools),
    after the library's reader has checked it.

    Raises:
        SafetensorsError: the header is malformed or does not fit the file.
    """
    name, size = str(path), os.path.getsize(path)
    with open(path, "rb") as f:
        n = safetensors.header_length(f.read(8), file_size=size, name=name)
        raw = f.read(n)
    safetensors.parse_header(raw, file_size=size, name=name)
    return 8 + n, json.loads(raw)


def _llama_data(spec: LlamaSpec, tensors: list[TensorPlan]) -> Iterator[bytes]:
    for t in tensors:
        yield llama_tensor(spec, t.name).tobytes()


def _sized_plan(spec: SizedSpec) -> list[list[TensorPlan]]:
    per_shard = spec.total_bytes // spec.shards
    width, cols = _DTYPE_BYTES[spec.dtype], 4096
    shards: list[list[TensorPlan]] = []
    n = 0
    for s in range(spec.shards):
        left = per_shard + (spec.total_bytes - per_shard * spec.shards if s == spec.shards - 1
                            else 0)
        tensors = []
        while left:
            nbytes = min(left, spec.max_tensor_bytes)
            if nbytes % (width * cols) == 0:
                t = TensorPlan(f"model.blocks.{n}.weight", spec.dtype,
                               (nbytes // (width * cols), cols))
            elif nbytes % width == 0:
                t = TensorPlan(f"model.blocks.{n}.weight", spec.dtype, (nbytes // width,))
            else:
                t = TensorPlan(f"model.blocks.{n}.weight", "U8", (nbytes,))
            tensors.append(t)
            left -= nbytes
            n += 1
        shards.append(tensors)
    return shards


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _sized_data(
    base: np.ndarray, scratch: np.ndarray, *, seed: int, shard: int, nbytes: int
) -> Iterator[memoryview]:
    """Distinct 64 MiB blocks: a random base block XOR a per-(seed, shard, block) word."""
    block = 0
    while nbytes:
        key = np.uint64(_splitmix64((seed << 40) ^ (shard << 20) ^ block) | 1)
        np.bitwise_xor(base, key, out=scratch)
        n = min(nbytes, _BLOCK_BYTES)
        yield memoryview(scratch).cast("B")[:n]
        nbytes -= n
        block += 1


# --------------------------------------------------------------------------- side files


def _config(spec: LlamaSpec | SizedSpec) -> dict:
    if isinstance(spec, LlamaSpec):
        dims = spec
    else:  # a plausible config for a model whose tensors are anonymous blocks
        dims = LlamaSpec(hidden_size=4096, num_hidden_layers=32, vocab_size=32000,
                         intermediate_size=11008, num_attention_heads=32,
                         num_key_value_heads=8, dtype=spec.dtype)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": None,
        "hidden_act": "silu",
        "hidden_size": dims.hidden_size,
        "head_dim": dims.head_dim,
        "initializer_range": 0.02,
        "intermediate_size": dims.intermediate_size,
        "max_position_embeddings": dims.max_position_embeddings,
        "mlp_bias": False,
        "num_attention_heads": dims.num_attention_heads,
        "num_hidden_layers": dims.num_hidden_layers,
        "num_key_value_heads": dims.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": dims.tie_word_embeddings,
        "torch_dtype": _TORCH_DTYPE.get(spec.dtype, "bfloat16"),
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vocab_size": dims.vocab_size,
    }


def _tokenizer(vocab_size: int) -> dict:
    vocab = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    for i in range(len(_SPECIAL_TOKENS), vocab_size):
        vocab[f"tok{i}"] = i
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": tok, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for i, tok in enumerate(_SPECIAL_TOKENS)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_side_files(dest: Path, spec: LlamaSpec | SizedSpec) -> list[str]:
    config = _config(spec)
    files = {
        "config.json": config,
        "generation_config.json": {"_from_model_config": True, "bos_token_id": 1,
                                   "eos_token_id": 2, "transformers_version": "4.46.0"},
        "tokenizer.json": _tokenizer(config["vocab_size"]),
        "tokenizer_config.json": {
            "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
            "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
            "clean_up_tokenization_spaces": False, "model_max_length": 2048,
            "tokenizer_class": "PreTrainedTokenizerFast", "legacy": False,
        },
        "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>",
                                    "unk_token": "<unk>"},
    }
    for name, obj in files.items():
        _write_json(dest / name, obj)
    return list(files)


# --------------------------------------------------------------------------- generate


def generate(spec: LlamaSpec | SizedSpec, dest: Path | str) -> SynthModel:
    """Write the model described by ``spec`` into ``dest`` (created if missing).

    Existing files of the same names are overwritten; each shard is written to a
    temporary name first and renamed, so a shard under its final name is complete.

    Returns:
        A :class:`SynthModel` describing what was written.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = shard_names(spec.shards)
    if isinstance(spec, LlamaSpec):
        plan = _llama_plan(spec)
        runs = _split_contiguous([t.nbytes for t in plan], spec.shards)
        per_shard = [[plan[i] for i in run] for run in runs]
        for name, tensors in zip(names, per_shard, strict=True):
            _write_shard(dest / name, tensors, _llama_data(spec, tensors))
    else:
        per_shard = _sized_plan(spec)
        rng = np.random.default_rng(spec.seed)
        base = rng.integers(0, 2**64 - 1, size=_BLOCK_BYTES // 8, dtype=np.uint64,
                            endpoint=True)
        scratch = np.empty_like(base)
        for idx, (name, tensors) in enumerate(zip(names, per_shard, strict=True)):
            nbytes = sum(t.nbytes for t in tensors)
            _write_shard(dest / name, tensors,
                         _sized_data(base, scratch, seed=spec.seed, shard=idx, nbytes=nbytes))
    weight_map = {t.name: name for name, ts in zip(names, per_shard, strict=True) for t in ts}
    total = sum(t.nbytes for ts in per_shard for t in ts)
    files = [*names, *_write_side_files(dest, spec)]
    if spec.shards > 1:
        _write_json(dest / "model.safetensors.index.json",
                    {"metadata": {"total_size": total},
                     "weight_map": dict(sorted(weight_map.items()))})
        files.append("model.safetensors.index.json")
    return SynthModel(path=dest, shards=names, files=tuple(sorted(files)),
                      weight_map=weight_map, total_size=total, spec=spec)


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m streamer.synth``."""
    p = argparse.ArgumentParser(prog="python -m streamer.synth", description=__doc__.split("\n")[0])
    p.add_argument("dest", type=Path)
    p.add_argument("--size", type=parse_size, help="sized model: tensor bytes (e.g. 2GiB)")
    p.add_argument("--llama", action="store_true", help="small Llama with real tensor names")
    p.add_argument("--shards", type=int, default=None)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=None)
    args = p.parse_args(argv)
    if args.llama == (args.size is not None):
        p.error("give exactly one of --llama or --size")
    try:
        if args.llama:
            spec: LlamaSpec | SizedSpec = llama(
                hidden=args.hidden, layers=args.layers, vocab=args.vocab,
                intermediate=args.intermediate, dtype=args.dtype,
                shards=args.shards or 2, seed=args.seed)
        else:
            spec = sized(args.size, shards=args.shards or 4, dtype=args.dtype, seed=args.seed)
        model = generate(spec, args.dest)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"path": str(model.path), "files": list(model.files),
                      "total_size": model.total_size, "file_bytes": model.file_bytes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
