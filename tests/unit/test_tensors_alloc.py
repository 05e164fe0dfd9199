"""Host allocations of the CPU tensors on transparent huge pages (``streamer.tensors.alloc``).

Checked against what the kernel says about this process (``/proc/self/smaps``): the huge
page path marks its mapping ``hg`` (MADV_HUGEPAGE) where the kernel has THP, the fallback
does not, and the memory goes back when the last view of a tensor is gone.
"""

from __future__ import annotations

import gc
import mmap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from streamer.tensors import TensorStreamOptions, alloc, stream_tensors

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


def _mapping(address: int) -> dict[str, str] | None:
    """The /proc/self/smaps entry of the mapping holding ``address`` (None: unmapped)."""
    entry: dict[str, str] | None = None
    found = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and ":" not in head:  # a new mapping: "start-end perms ..."
            if found:
                return entry
            lo, hi = (int(x, 16) for x in head.split("-"))
            found = lo <= address < hi
            entry = {"range": head}
        elif entry is not None and ":" in head:
            key, _, value = line.partition(":")
            entry[key] = value.strip()
    return entry if found else None


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * mmap.PAGESIZE


def _kb(value: str) -> int:
    return int(value.split()[0]) * 1024


def test_probe_reads_the_kernel_mode(tmp_path: Path) -> None:
    (tmp_path / "hpage_pmd_size").write_text("2097152\n")
    for mode, expected in (("always", 2 * MiB), ("madvise", 2 * MiB), ("never", 0)):
        words = " ".join(f"[{m}]" if m == mode else m for m in ("always", "madvise", "never"))
        (tmp_path / "enabled").write_text(words + "\n")
        assert alloc.probe(tmp_path) == expected, mode
    assert alloc.probe(tmp_path / "missing") == 0  # no THP in this kernel
    (tmp_path / "enabled").write_text("always [madvise] never\n")
    (tmp_path / "hpage_pmd_size").write_text("oops\n")
    assert alloc.probe(tmp_path) == 2 * MiB  # the x86/arm64 size when the size is unreadable


def test_large_tensors_get_madvised_huge_pages_where_the_kernel_has_them() -> None:
    t = alloc.empty(64 * MiB)
    t.fill_(7)
    entry = _mapping(t.data_ptr())
    assert entry is not None
    if alloc.probe() == 0:  # no THP here: the plain allocator, no madvise
        assert "hg" not in entry["VmFlags"].split()
        return
    assert t.data_ptr() % alloc.huge_page_size() == 0
    assert "hg" in entry["VmFlags"].split(), entry
    assert entry.get("THPeligible") == "1", entry
    # Only what was written is resident: the alignment slack is never touched.
    assert _kb(entry["Rss"]) <= 64 * MiB + alloc.huge_page_size()


def test_small_tensors_and_the_switch_use_torch_empty() -> None:
    # torch.empty's storage is torch's own (resizable); ours wraps an mmap (frombuffer, not
    # resizable). The mapping's flags would not tell: glibc may serve torch.empty from a
    # heap region that something else in the process madvised.
    for t in (alloc.empty(64 * MiB, huge_pages=False), alloc.empty(64 * 1024)):
        t.fill_(1)
        assert t.untyped_storage().resizable()
    assert not alloc.empty(64 * MiB).untyped_storage().resizable() or not alloc.huge_page_size()
    assert alloc.empty(0).numel() == 0


def test_tensors_behave_like_torch_empty_ones() -> None:
    raw = alloc.empty(8 * MiB)
    assert (raw.dtype, raw.shape, raw.device.type) == (torch.uint8, (8 * MiB,), "cpu")
    assert raw.is_contiguous() and not raw.requires_grad
    w = raw.view(torch.bfloat16).view(1024, -1)
    w[3, 5] = 1.5
    assert w[3, 5].item() == 1.5
    assert raw.numpy().flags.writeable
    copy = w.clone()
    assert torch.equal(copy, w)
    raw.share_memory_()  # moved to shared memory, as torch.multiprocessing does
    assert raw.is_shared() and w[3, 5].item() == 1.5


def test_memory_is_released_when_the_last_view_goes() -> None:
    gc.collect()
    base = _rss()
    t = alloc.empty(256 * MiB)
    address = t.data_ptr()
    t.fill_(3)
    assert _rss() - base >= 200 * MiB
    view = t.view(torch.float16)[MiB:]
    del t
    gc.collect()
    assert _mapping(address) is not None  # a view keeps the mapping
    assert view[0].item() != 0
    del view
    gc.collect()
    if alloc.probe():  # our own mapping: unmapped with the storage
        assert _mapping(address) is None
    assert _rss() - base < 64 * MiB


@pytest.mark.parametrize("huge_pages", [True, False])
def test_streamed_tensors_come_from_the_allocator(tmp_path: Path, huge_pages: bool) -> None:
    g = torch.Generator().manual_seed(1)
    save_file({"big": torch.randn(3 * MiB, generator=g).bfloat16(),  # 6 MiB, many segments
               "small": torch.randn(100, generator=g)}, tmp_path / "m.safetensors")  # fmt: skip
    want = load_file(tmp_path / "m.safetensors")
    options = TensorStreamOptions(max_memory=8 * MiB, buffer_size=1 * MiB,
                                  huge_pages=huge_pages)  # fmt: skip
    got = dict(stream_tensors(tmp_path, options=options))
    assert got.keys() == want.keys()
    for name, ref in want.items():
        assert got[name].dtype == ref.dtype and torch.equal(got[name], ref), name
    flags = _mapping(got["big"].data_ptr())["VmFlags"].split()  # type: ignore[index]
    assert ("hg" in flags) == (huge_pages and alloc.probe() > 0)
