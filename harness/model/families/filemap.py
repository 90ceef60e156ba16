"""Shared file mappings on a block filesystem (guest/workloads/mmops-filemap.c; docs/filemap.md).

A file on ext4 (an ext2-format filesystem mounted with the ext4 driver, no journal) mapped
MAP_SHARED.  The model follows, per page of the file, whether it is dirty in the page cache and
whether it is mapped in the workload's VMA, and from that the windows each operation opens
(mm/rmap.c, mm/memory.c, mm/truncate.c, fs/ext4 of 6.1 and 6.12):

  writeback (msync, fsync; punch-hole on 6.1)
      folio_clear_dirty_for_io -> folio_mkclean walks the rmap of each dirty folio that is mapped
      anywhere; page_vma_mkclean_one opens a PROTECTION_PAGE window over the folio in each shared
      VMA (a 4 KiB page: ext4 has no large folios in either version), in index order, from the
      syncing task.  A dirty page that is not mapped has no window; a clean one is not written.
  zap (fdontneed, punch, ftruncate)
      zap_page_range_single opens a CLEAR window: MADV_DONTNEED over the range in the VMA;
      unmap_mapping_range -> unmap_mapping_range_vma over the VMA's part of the file range, whether
      anything is mapped there or not.  Punch-hole calls it once (truncate_pagecache_range), a
      truncate twice (truncate_pagecache), from round_up(size) to the VMA's end.
  faults (fwrite, fverify) and pwrite: none.

On 6.1 every window's end calls invalidate_range over the window's range first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.events import Event
from harness.model.callsites import register_judged
from harness.model.expect import Expectation, Want, _ir
from harness.model.families._common import family_state, register
from harness.model.ops import PAGE, AddressSpace, ModelError, Op
from harness.model.versions import Features

SCENARIO = "filemap"


@dataclass
class FileMapping:
    """One MAP_SHARED mapping of a file at offset 0, and the file's pages by index."""

    start: int
    end: int
    size: int                                       # the file's size now
    dirty: set[int] = field(default_factory=set)    # dirty in the page cache
    mapped: set[int] = field(default_factory=set)   # mapped by a PTE of the VMA

    def pages(self, start: int, end: int) -> range:
        """The file's page indexes behind [start, end) of the mapping."""
        return range((start - self.start) // PAGE, (end - self.start) // PAGE)

    def addr(self, page: int) -> int:
        return self.start + page * PAGE

    def drop(self, pages: range) -> None:
        """Pages gone from the page cache (punched or cut off): neither dirty nor mapped."""
        self.dirty.difference_update(pages)
        self.mapped.difference_update(pages)


def _files(aspace: AddressSpace) -> dict[int, FileMapping]:
    """The file mappings by start, kept apart from the anonymous VMAs (mmops.c's operations must not
    treat a file VMA as anonymous memory)."""
    return family_state(aspace, "filemap", dict[int, FileMapping])


def _mapping(op: Op, aspace: AddressSpace) -> FileMapping:
    for fm in _files(aspace).values():
        if fm.start <= op.start and op.end <= fm.end:
            return fm
    raise ModelError(f"{op.describe()} is not inside a file mapping (fmap)")


def _clean_want(fm: FileMapping, page: int, f: Features, why: str) -> Want:
    a = fm.addr(page)
    return Want(Event.PROTECTION_PAGE, a, a + PAGE, f"{why}: page_vma_mkclean_one", invalidate_range=_ir(f, a, a + PAGE))


def _writeback(fm: FileMapping, pages: range, f: Features, why: str) -> list[Want]:
    """Write back the dirty pages among `pages`: a window for each that is mapped, in index order;
    all of them clean afterwards."""
    dirty = sorted(p for p in pages if p in fm.dirty)
    fm.dirty.difference_update(dirty)
    return [_clean_want(fm, p, f, why) for p in dirty if p in fm.mapped]


def _zap_want(start: int, end: int, f: Features, why: str) -> Want:
    return Want(Event.CLEAR, start, end, f"{why}: zap_page_range_single", invalidate_range=_ir(f, start, end))


def expect_fmap(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """mmap of a fresh file (truncated to its size, a hole): no window."""
    files = _files(aspace)
    if any(fm.start < op.end and op.start < fm.end for fm in files.values()) or aspace.overlapping(op.start, op.end):
        raise ModelError(f"{op.describe()} overlaps a mapping the model already has")
    files[op.start] = FileMapping(op.start, op.end, op.extra["file_size"])
    return Expectation(op)


def expect_fwrite(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """Writes through the mapping: shared write faults (do_shared_fault, wp_page_shared) open no
    window; the pages are mapped and dirty."""
    fm = _mapping(op, aspace)
    pages = fm.pages(op.start, op.end)
    fm.mapped.update(pages)
    fm.dirty.update(pages)
    return Expectation(op)


def expect_pwrite(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """pwrite(2): the page cache only; a page mapped before stays mapped (the same folio)."""
    fm = _mapping(op, aspace)
    fm.dirty.update(fm.pages(op.start, op.end))
    return Expectation(op)


def expect_sync(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """msync(MS_SYNC) of a range (vfs_fsync_range over its file range) and fsync of the whole file:
    ext4_sync_file writes the range back; in no-journal mode it then syncs the inode's metadata with
    sync_inode_metadata, whose writeback_control has range 0..0 and WB_SYNC_ALL: page 0 is written
    back too when the inode is dirty for datasync, which the model cannot tell."""
    fm = _mapping(op, aspace)
    asked = fm.pages(op.start, op.end)
    pages = range(asked.start, min(asked.stop, fm.size // PAGE))
    if 0 not in pages and 0 in fm.dirty and 0 in fm.mapped:
        raise ModelError(f"{op.describe()} leaves the file's page 0 dirty and mapped: sync_inode_metadata "
                         f"may write it back too (ext4 without a journal), which the model does not predict")
    return Expectation(op, wants=_writeback(fm, pages, f, f"{op.kind}: writeback of a dirty mapped page"))


def expect_punch(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """fallocate(PUNCH_HOLE | KEEP_SIZE) of whole pages inside the file.

    6.1's ext4_punch_hole first writes back the range when the mapping has any dirty page
    (mapping_tagged(PAGECACHE_TAG_DIRTY), filemap_write_and_wait_range); 6.12's (reworked through
    ext4_truncate_page_cache_block_range) writes back only with data=journal.  Then
    truncate_pagecache_range -> unmap_mapping_range zaps the VMA's part of the range once.
    """
    fm = _mapping(op, aspace)
    pages = fm.pages(op.start, op.end)
    if pages.stop > fm.size // PAGE:
        raise ModelError(f"{op.describe()} reaches past the file's size: ext4 clamps it, the model does not")
    wants = []
    if f.ext4_punch_writeback and fm.dirty:
        wants += _writeback(fm, pages, f, "ext4_punch_hole writes the range back first (6.1)")
    wants.append(_zap_want(op.start, op.end, f, "punch-hole: truncate_pagecache_range -> unmap_mapping_range"))
    fm.drop(pages)
    return Expectation(op, wants=wants)


def expect_ftruncate(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """ftruncate to a page-aligned size: ext4_setattr -> truncate_pagecache, which calls
    unmap_mapping_range(round_up(size), 0) twice (before and after truncate_inode_pages): two CLEAR
    windows from the new end of file to the VMA's end, if the VMA maps anything past it.  Growing
    the file the same way (no window when the VMA ends below the new size)."""
    fm = _mapping(op, aspace)
    size = op.extra["file_size"]
    hole = fm.start + size
    wants = []
    if hole < fm.end:
        why = "ftruncate: truncate_pagecache -> unmap_mapping_range"
        wants = [_zap_want(hole, fm.end, f, f"{why} (first)"), _zap_want(hole, fm.end, f, f"{why} (again)")]
    fm.drop(range(size // PAGE, max(size, fm.size) // PAGE))
    fm.size = size
    return Expectation(op, wants=wants)


def expect_fdontneed(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """MADV_DONTNEED of file pages: zap_page_range_single over the range (one VMA); the pages stay in
    the page cache (a dirty PTE's dirty bit goes to the folio) and are no longer mapped."""
    fm = _mapping(op, aspace)
    fm.mapped.difference_update(fm.pages(op.start, op.end))
    return Expectation(op, wants=[_zap_want(op.start, op.end, f, "MADV_DONTNEED of file pages")])


def expect_fverify(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """Reading every page below the file's size through the mapping faults each one in (read faults
    and fault-around open no window): all of them are mapped afterwards."""
    fm = _mapping(op, aspace)
    fm.mapped.update(range(fm.size // PAGE))
    return Expectation(op)


register("fmap", expect_fmap, ints=("file_size",))
register("fwrite", expect_fwrite)
register("pwrite", expect_pwrite)
register("msync", expect_sync)
register("fsync", expect_sync)
register("punch", expect_punch)
register("ftruncate", expect_ftruncate, ints=("file_size",))
register("fdontneed", expect_fdontneed)
register("fverify", expect_fverify)

# msync/fsync (and 6.1's punch-hole): page_vma_mkclean_one's PROTECTION_PAGE per dirty mapped page;
# fdontneed, punch and ftruncate: zap_page_range_single's CLEAR over the VMA's part of the range.
register_judged("page_vma_mkclean_one", SCENARIO)
register_judged("zap_page_range_single", SCENARIO)
