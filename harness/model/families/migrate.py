"""Page migration (guest/workloads/mmops-migrate.c; docs/migrate.md).

Every way a user moves an anonymous page, on 6.1 and 6.12, goes through migrate_pages() and
unmaps the folio with try_to_migrate() (mm/rmap.c): one try_to_migrate_one() per VMA mapping the
folio, which opens a CLEAR window (not MIGRATE: that event is migrate_device.c's, for device
memory) over [address, vma_address_end()): one 4 KiB page, or a PMD-mapped THP's whole 2 MiB
(set_pmd_migration_entry() under the same window; THP migration is CONFIG_ARCH_ENABLE_THP_MIGRATION,
on in both cloud kernels).  On 6.1 the window's mmu_notifier_invalidate_range_end() calls
invalidate_range over the same range first.  Putting the new page in place,
remove_migration_ptes() / remove_migration_pmd(), opens no window: the entry it replaces was not
present ("No need to invalidate - it was non-present before", mm/migrate.c).

  numa    move_pages(2) of every page (a THP by its head page) to a node: one window per
          4 KiB page and per PMD-mapped THP, in address order (do_pages_move queues them in
          order); a folio that migrate_pages retries is unmapped again, so a unit may have more
          than one window, but no window covers anything else.
  mbind   mbind(2) MPOL_BIND with MPOL_MF_MOVE over a whole mapping: the VMA's policy changes
          without a window (no split: the range is the whole VMA), then the same migration.
  fragment  MADV_DONTNEED of every other page, one call each: a CLEAR per page
          (zap_page_range_single), leaving holes for compaction.
  compact  /proc/sys/vm/compact_memory from the workload's task: compact_nodes() migrates movable
          pages of every process, synchronously in the writer; the workload's own windows are
          4 KiB CLEARs of single pages (isolate_migratepages_block skips compound pages when
          compacting everything: 6.1 `PageCompound && !alloc_contig`, 6.12 the same through
          skip_isolation_on_order for a pageblock-sized THP).  Which pages move is the
          allocator's business, so mmops reports the frames before and after and
          judge_compaction_moves() checks each moved page against the windows.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from harness.events import Callback, Event, Record
from harness.model.callsites import register_judged
from harness.model.contract import Pair
from harness.model.expect import Expectation, Want, register_expectation
from harness.model.findings import Finding, window_around
from harness.model.ops import HPAGE, PAGE, USER_ADDR_LIMIT, AddressSpace, ModelError, Op, block, register_op
from harness.model.versions import Features

SCENARIO = "migrate"
MIGRATE_INTS = ("node", "pages", "already", "moved", "failed", "thp_heads", "err")

register_op("numa", ints=MIGRATE_INTS)
register_op("mbind", ints=MIGRATE_INTS)
register_op("fragment", ints=("pages",))
register_op("compact", ints=("pages", "moved", "t_read0", "t_read1"))
# Another process's range moved (kvm-migrate: the VMM's guest memory); run without the probe on
# mmops itself, so it has no expectation of its own: KVM's trace and the probe on the VMM judge it.
register_op("movepid", ints=("pid", *MIGRATE_INTS))
# try_to_migrate_one: a window per page or PMD-mapped THP moved, and nothing when the migration
# entries are removed (kvm-migrate: judge_foreign_move); zap_page_range_single: fragment's CLEAR per page.
register_judged("try_to_migrate_one", SCENARIO, "kvm-migrate")
register_judged("zap_page_range_single", SCENARIO)


def _finding(rule: str, op: Op, message: str, rec: Optional[Record], records: Sequence[Record],
             expected: str = "", observed: str = "") -> Finding:
    return Finding(rule=rule, op=op.describe(), message=message, expected=expected,
                   observed=observed or (rec.describe() if rec else ""),
                   window=window_around(records, rec.seq) if rec else ())


def migration_units(op: Op, aspace: AddressSpace) -> list[tuple[int, int]]:
    """The ranges try_to_migrate_one's windows cover when every folio of the mapping moves: a
    PMD-mapped THP's 2 MiB, else each 4 KiB page."""
    units: list[tuple[int, int]] = []
    addr = op.start
    while addr < op.end:
        b0 = block(addr)[0]
        blk = aspace.blocks.get(b0)
        if blk is not None and blk.present and blk.large_folio:
            if not blk.pmd_mapped:
                # 6.12 splits a partially mapped large folio before migrating it (migrate_pages_batch),
                # 6.1 migrates it whole under one window over the folio: not modelled.
                raise ModelError(f"{op.kind}: migrating the PTE-mapped large folio at {b0:#x} is not modelled")
            if addr != b0 or b0 + HPAGE > op.end:
                raise ModelError(f"{op.kind}: the range must cover whole THP blocks ({b0:#x})")
            units.append((b0, b0 + HPAGE))
            addr = b0 + HPAGE
            continue
        if blk is not None and not blk.present:
            raise ModelError(f"{op.kind}: the block at {b0:#x} was zapped; the model does not know which "
                             f"pages are present")
        units.append((addr, addr + PAGE))
        addr += PAGE
    return units


def window_problems(pair: Pair, f: Features) -> Optional[str]:
    """What is wrong inside a migration (or compaction) window: nothing nests in it, and on 6.1 its
    end calls invalidate_range over the same range first."""
    if pair.children:
        return f"{pair.describe()} has a nested window {pair.children[0].describe()}"
    if f.invalidate_range and not any(r.callback == Callback.INVALIDATE_RANGE and (r.start, r.end) == pair.range
                                      for r in pair.inner):
        return (f"no invalidate_range over {pair.describe()} before its end (try_to_migrate_one ends with "
                f"mmu_notifier_invalidate_range_end on {f.label})")
    return None


def _migration_windows(op: Op, pairs: Sequence[Pair], records: Sequence[Record], f: Features,
                       fits: Callable[[Pair], bool], during: str, expected: str) -> tuple[list[Finding], list[Pair]]:
    """try_to_migrate_one's windows: the CLEARs over what `fits` says may move, each checked as a
    window, and a finding for any other window.  Returns the findings and those CLEARs."""
    findings: list[Finding] = []
    clears: list[Pair] = []
    for pair in pairs:
        if pair.event != Event.CLEAR or not fits(pair):
            findings.append(_finding("unexpected", op, f"unexpected window {pair.describe()} during {during}",
                                     pair.start, records, expected=expected))
            continue
        problem = window_problems(pair, f)
        if problem:
            findings.append(_finding("migrate", op, problem, pair.start, records))
        clears.append(pair)
    return findings, clears


def expect_migrate(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """numa (move_pages) and mbind (MPOL_MF_MOVE): a CLEAR per unit, first seen in address order."""
    if not aspace.owns(op.start, op.end):
        raise ModelError(f"{op.kind}: [{op.start:#x}, {op.end:#x}) is not inside one of the workload's mappings")
    units = migration_units(op, aspace)
    node, pages = op.extra["node"], op.extra["pages"]
    if op.extra["already"]:
        raise ModelError(f"{op.kind}: {op.extra['already']} of {pages} pages were on node {node} already; the "
                         f"script must move pages off their node for the model to know which move")
    unit_of = {u[0]: u for u in units}
    how = "move_pages(2)" if op.kind == "numa" else "mbind(2) MPOL_MF_MOVE"

    def check(pairs: list[Pair], _own: list[Record], records: Sequence[Record]) -> list[Finding]:
        seen: dict[tuple[int, int], int] = {}
        order: list[tuple[int, int]] = []
        findings, clears = _migration_windows(
            op, pairs, records, f, lambda pair: unit_of.get(pair.range[0]) == pair.range, how,
            "a CLEAR per page or PMD-mapped THP moved (try_to_migrate_one)")
        for pair in clears:
            if pair.range not in seen:
                order.append(pair.range)
            seen[pair.range] = seen.get(pair.range, 0) + 1
        missing = [u for u in units if u not in seen]
        if missing:
            findings.append(_finding("missing", op, f"{len(missing)} of {len(units)} folios moved to node {node} "
                                     f"without a window, first [{missing[0][0]:#x}, {missing[0][1]:#x})", None,
                                     records, expected="try_to_migrate_one's CLEAR over each folio moved",
                                     observed=f"{len(seen)} folios with a window"))
        if order != sorted(order):
            at = next(i for i in range(1, len(order)) if order[i] < order[i - 1])
            findings.append(_finding("order", op, f"folio [{order[at][0]:#x}, {order[at][1]:#x}) was first "
                                     f"unmapped after [{order[at - 1][0]:#x}, {order[at - 1][1]:#x}): the pages "
                                     f"are queued and unmapped in address order", None, records))
        if op.extra["err"] or op.extra["failed"] or op.extra["moved"] != pages:
            findings.append(_finding("migrate", op, f"{op.extra['moved']} of {pages} pages are on node {node} "
                                     f"afterwards ({op.extra['failed']} elsewhere, errno {op.extra['err']})", None,
                                     records, expected=f"all {pages} pages on node {node}"))
        return findings

    return Expectation(op, check=check)


def expect_fragment(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """MADV_DONTNEED of every other page, one call each: zap_page_range_single's CLEAR per page."""
    if any(op.start <= b < op.end for b in aspace.blocks):
        raise ModelError("fragment: a THP mapping would split; fragment a nothp mapping")
    exp = Expectation(op)
    for page in range(op.start + PAGE, op.end, 2 * PAGE):
        exp.wants.append(Want(Event.CLEAR, page, page + PAGE, "MADV_DONTNEED of one page: zap_page_range_single",
                              invalidate_range=(page, page + PAGE) if f.invalidate_range else None))
    return exp


def expect_compact(op: Op, aspace: AddressSpace, f: Features) -> Expectation:
    """compact_memory: the workload's windows are try_to_migrate_one's 4 KiB CLEARs, on any of its
    pages (its stack and text move too); judge_compaction_moves() checks the pages that moved."""

    def one_page(pair: Pair) -> bool:
        s, e = pair.range
        return e - s == PAGE and not s % PAGE and e <= USER_ADDR_LIMIT

    def check(pairs: list[Pair], _own: list[Record], records: Sequence[Record]) -> list[Finding]:
        return _migration_windows(op, pairs, records, f, one_page, "compaction",
                                  "4 KiB CLEARs from try_to_migrate_one (compaction skips compound pages)")[0]

    return Expectation(op, check=check)


def judge_compaction_moves(op: Op, moved: Sequence[int], pairs: Sequence[Pair],
                           records: Sequence[Record]) -> list[Finding]:
    """Each page of the mapping whose frame changed between mmops's two reads of pagemap
    (t_read0 before compact_memory, t_read1 after) was unmapped under a CLEAR window of exactly
    that page opened between the reads, by whichever task migrated it (the writer's compaction,
    or kcompactd)."""
    t0, t1 = op.extra["t_read0"], op.extra["t_read1"]
    windowed = {p.range[0] for p in pairs
                if p.event == Event.CLEAR and p.range[1] - p.range[0] == PAGE and t0 <= p.start.time_ns <= t1}
    bare = [p for p in moved if p not in windowed]
    if not bare:
        return []
    return [_finding("migrate", op, f"{len(bare)} of {len(moved)} pages changed frame without a CLEAR window "
                     f"over them, first {bare[0]:#x}", None, records,
                     expected="try_to_migrate_one's CLEAR [page, page + 4 KiB) for every page compaction moved",
                     observed=f"{len(windowed)} pages under a 4 KiB CLEAR between the pagemap reads")]


def judge_foreign_move(op: Op, unit: int, records: Sequence[Record]) -> list[Finding]:
    """movepid of another process's range (its mm watched by the probe): the windows opened while
    move_pages ran are CLEARs of whole units (`unit`: 4 KiB pages, or 2 MiB for PMD-mapped THPs),
    each unit of the range under at least one, nothing else."""
    starts = [r for r in records if r.callback == Callback.START and op.t0 <= r.time_ns <= op.t1]
    units = {(a, a + unit) for a in range(op.start, op.end, unit)}
    findings = [_finding("unexpected", op, f"window {r.describe()} while move_pages ran: not a CLEAR of one "
                         f"{unit >> 10} KiB unit of the range", r, records)
                for r in starts if r.event != Event.CLEAR or (r.start, r.end) not in units]
    missing = sorted(units - {(r.start, r.end) for r in starts})
    if missing:
        findings.append(_finding("missing", op, f"{len(missing)} of {len(units)} units moved without a window, "
                                 f"first [{missing[0][0]:#x}, {missing[0][1]:#x})", None, records,
                                 expected="try_to_migrate_one's CLEAR over each"))
    return findings


register_expectation("numa", expect_migrate)
register_expectation("mbind", expect_migrate)
register_expectation("fragment", expect_fragment)
register_expectation("compact", expect_compact)
