// SPDX-License-Identifier: GPL-2.0
/*
 * mmops' migration family: pages moved between NUMA nodes and by compaction, each page's node or
 * frame read before and after so the harness knows which pages really moved.
 *
 *   numa:NAME:NODE      move_pages(2) of the mapping to NODE: every 4 KiB page, and for a THP its
 *                       head page only (the whole folio moves with it); reports the pages on NODE
 *                       before and after (move_pages' status query)
 *   mbind:NAME:NODE     mbind(2) MPOL_BIND to NODE with MPOL_MF_MOVE | MPOL_MF_STRICT over the
 *                       whole mapping; the same report
 *   fragment:NAME       MADV_DONTNEED every other page, one call per page: holes for compaction
 *   compact:NAME        write 1 to /proc/sys/vm/compact_memory; reports which of the mapping's pages
 *                       changed frame (/proc/self/pagemap before and after) and checks the data of
 *                       every page fragment left
 *   movepid:PID:START:LEN[:NODE]
 *                       move_pages(2) of another process's range (a VMM's guest memory; run with
 *                       --no-probe) to NODE, by default the node other than its first page's; the
 *                       same report, with the pid
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "mmops.h"

#define MPOL_BIND_		2
#define MPOL_MF_STRICT_		(1 << 0)
#define MPOL_MF_MOVE_		(1 << 1)
#define KPF_COMPOUND_TAIL	16
#define KPF_THP			22
#define PM_PRESENT		(1ULL << 63)
#define PM_PFN_MASK		((1ULL << 55) - 1)
#define MAX_PAGES		8192	/* 32 MiB per mapping */

/* Static: the operations must not malloc (a heap change is an mm event inside their window). */
static void *addrs[MAX_PAGES];
static int nodes[MAX_PAGES], status[MAX_PAGES], before[MAX_PAGES];
static uint64_t pfns[MAX_PAGES];
static unsigned char holes[MAX_MAPS][MAX_PAGES];

static size_t npages(const char *op, struct mapping *m)
{
	if (m->size / PAGE > MAX_PAGES)
		fail(op, "the mapping is larger than 32 MiB", 0);
	return m->size / PAGE;
}

/* Every page's node (or -errno) in [start, start + n pages) of process `pid` (0: this one), from
 * move_pages' query form. */
static void query_range(const char *op, int pid, uintptr_t start, size_t n, int *out)
{
	for (size_t i = 0; i < n; i++)
		addrs[i] = (void *)(start + i * PAGE);
	if (syscall(SYS_move_pages, pid, n, addrs, NULL, out, 0))
		fail(op, "move_pages (query)", errno);
}

static void query_nodes(const char *op, struct mapping *m, int *out)
{
	query_range(op, 0, m->start, npages(op, m), out);
}

/* The frames of n pages from `start` in /proc/PID/pagemap (root sees frame numbers), 0 if not present. */
static void read_range_pfns(const char *op, const char *pagemap, uintptr_t start, size_t n, uint64_t *out)
{
	int fd = open(pagemap, O_RDONLY | O_CLOEXEC);
	ssize_t want = n * sizeof(uint64_t);

	if (fd < 0)
		fail(op, "open pagemap", errno);
	if (pread(fd, out, want, start / PAGE * sizeof(uint64_t)) != want)
		fail(op, "read pagemap", errno);
	close(fd);
	for (size_t i = 0; i < n; i++)
		out[i] = out[i] & PM_PRESENT ? out[i] & PM_PFN_MASK : 0;
}

static void read_pfns(const char *op, struct mapping *m, uint64_t *out)
{
	read_range_pfns(op, "/proc/self/pagemap", m->start, npages(op, m), out);
}

/* Whether a frame is a THP's tail page (its head moves the whole folio). */
static int thp_tail(int kfd, uint64_t pfn, int *thp)
{
	uint64_t flags = 0;

	if (!pfn || pread(kfd, &flags, sizeof(flags), pfn * sizeof(flags)) != sizeof(flags))
		return 0;
	*thp = !!(flags & (1ULL << KPF_THP));
	return *thp && (flags & (1ULL << KPF_COMPOUND_TAIL));
}

static int parse_node(const char *op, const char *s)
{
	char *end;
	long node = strtol(s, &end, 10);

	if (*end || node < 0 || node > 63)
		fail(op, "NODE must be 0..63", 0);
	return node;
}

static void report(const char *op, struct mapping *m, int node, int err, int thp_heads, uint64_t t0, uint64_t t1)
{
	size_t n = npages(op, m);
	long already = 0, moved = 0, failed = 0;

	query_nodes(op, m, status);
	for (size_t i = 0; i < n; i++) {
		already += before[i] == node;
		moved += before[i] != node && status[i] == node;
		failed += status[i] != node;
	}
	printf("{\"op\": \"%s\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"node\": %d, \"pages\": %zu, "
	       "\"already\": %ld, \"moved\": %ld, \"failed\": %ld, \"thp_heads\": %d, \"err\": %d, "
	       "\"anon_huge_kb\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", op, m->name,
	       (unsigned long)m->start, (unsigned long)(m->start + m->size), node, n, already, moved, failed,
	       thp_heads, err, anon_huge_kb(m->start, m->start + m->size), t0, t1);
}

/* Fill addrs/nodes with the pages of [start, +pages) to move to `node`: each 4 KiB page, and a THP
 * by its head only (a tail of a THP already queued would fail with EBUSY); the count, and the THPs
 * in *thp_heads.  pfns[] holds the range's frames. */
static size_t move_list(const char *op, uintptr_t start, size_t pages, int node, int *thp_heads)
{
	size_t count = 0;
	int kfd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);

	if (kfd < 0)
		fail(op, "open /proc/kpageflags", errno);
	*thp_heads = 0;
	for (size_t i = 0; i < pages; i++) {
		int thp = 0;

		if (thp_tail(kfd, pfns[i], &thp))
			continue;
		*thp_heads += thp;
		addrs[count] = (void *)(start + i * PAGE);
		nodes[count++] = node;
	}
	close(kfd);
	return count;
}

static void op_numa(char **f, int n)
{
	struct mapping *m;
	size_t count;
	int node, thp_heads, err = 0;
	uint64_t t0, t1;

	if (n < 3)
		fail("numa", "usage numa:NAME:NODE", 0);
	m = find("numa", f[1]);
	node = parse_node("numa", f[2]);
	query_nodes("numa", m, before);
	read_pfns("numa", m, pfns);
	count = move_list("numa", m->start, npages("numa", m), node, &thp_heads);
	t0 = now_ns();
	if (syscall(SYS_move_pages, 0, count, addrs, nodes, status, MPOL_MF_MOVE_) < 0)
		err = errno;
	t1 = now_ns();
	report("numa", m, node, err, thp_heads, t0, t1);
}

static void op_movepid(char **f, int n)
{
	char pagemap[64];
	uintptr_t start;
	size_t pages, count;
	long already = 0, moved = 0, failed = 0;
	int pid, node, thp_heads, err = 0;
	uint64_t t0, t1;

	if (n < 4)
		fail("movepid", "usage movepid:PID:START:LEN[:NODE]", 0);
	pid = atoi(f[1]);
	start = strtoul(f[2], NULL, 0) & ~(PAGE - 1);
	pages = parse_size("movepid", f[3]) / PAGE;
	if (pid <= 0 || !pages || pages > MAX_PAGES)
		fail("movepid", "PID must be a process, LEN 4K..32M", 0);
	query_range("movepid", pid, start, pages, before);
	node = n > 4 ? parse_node("movepid", f[4]) : before[0] == 0;
	snprintf(pagemap, sizeof(pagemap), "/proc/%d/pagemap", pid);
	read_range_pfns("movepid", pagemap, start, pages, pfns);
	count = move_list("movepid", start, pages, node, &thp_heads);
	t0 = now_ns();
	if (syscall(SYS_move_pages, pid, count, addrs, nodes, status, MPOL_MF_MOVE_) < 0)
		err = errno;
	t1 = now_ns();
	query_range("movepid", pid, start, pages, status);
	for (size_t i = 0; i < pages; i++) {
		already += before[i] == node;
		moved += before[i] != node && status[i] == node;
		failed += status[i] != node;
	}
	printf("{\"op\": \"movepid\", \"pid\": %d, \"start\": %lu, \"end\": %lu, \"node\": %d, \"pages\": %zu, "
	       "\"already\": %ld, \"moved\": %ld, \"failed\": %ld, \"thp_heads\": %d, \"err\": %d, "
	       "\"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", pid, (unsigned long)start,
	       (unsigned long)(start + pages * PAGE), node, pages, already, moved, failed, thp_heads, err, t0, t1);
}

static void op_mbind(char **f, int n)
{
	struct mapping *m;
	unsigned long mask;
	uint64_t t0, t1;
	int node, err = 0;

	if (n < 3)
		fail("mbind", "usage mbind:NAME:NODE", 0);
	m = find("mbind", f[1]);
	node = parse_node("mbind", f[2]);
	mask = 1UL << node;
	query_nodes("mbind", m, before);
	t0 = now_ns();
	if (syscall(SYS_mbind, m->start, m->size, MPOL_BIND_, &mask, 64, MPOL_MF_MOVE_ | MPOL_MF_STRICT_))
		err = errno;
	t1 = now_ns();
	report("mbind", m, node, err, 0, t0, t1);
}

static void op_fragment(char **f, int n)
{
	struct mapping *m;
	size_t pages, freed = 0;
	uint64_t t0, t1;

	if (n < 2)
		fail("fragment", "usage fragment:NAME", 0);
	m = find("fragment", f[1]);
	pages = npages("fragment", m);
	t0 = now_ns();
	for (size_t i = 1; i < pages; i += 2) {
		if (madvise((void *)(m->start + i * PAGE), PAGE, MADV_DONTNEED))
			fail("fragment", "madvise(MADV_DONTNEED)", errno);
		holes[m - maps][i] = 1;
		freed++;
	}
	t1 = now_ns();
	printf("{\"op\": \"fragment\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"pages\": %zu, "
	       "\"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)m->start,
	       (unsigned long)(m->start + m->size), freed, t0, t1);
}

/* Pages fragment left whose bytes are not what was written (a hole reads as zeros). */
static long bad_kept_pages(struct mapping *m)
{
	long bad = 0;

	for (size_t i = 0; i < m->size / PAGE; i++) {
		const unsigned char *p = (const unsigned char *)(m->start + i * PAGE);
		unsigned char v = m->shadow[i];

		if (holes[m - maps][i])
			continue;
		for (size_t j = 0; j < PAGE; j++) {
			if (p[j] != (v ? v : (j == 0))) {
				bad++;
				break;
			}
		}
	}
	return bad;
}

static void op_compact(char **f, int n)
{
	static uint64_t after[MAX_PAGES];
	struct mapping *m;
	size_t pages;
	long present = 0, moved = 0;
	uint64_t t_read0, t0, t1, t_read1;
	int first = 1;

	if (n < 2)
		fail("compact", "usage compact:NAME", 0);
	m = find("compact", f[1]);
	pages = npages("compact", m);
	t_read0 = now_ns();
	read_pfns("compact", m, pfns);
	t0 = now_ns();
	if (write_str("/proc/sys/vm/compact_memory", "1"))
		fail("compact", "write /proc/sys/vm/compact_memory", errno);
	t1 = now_ns();
	read_pfns("compact", m, after);
	t_read1 = now_ns();
	printf("{\"op\": \"compact\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"moved_pages\": [",
	       m->name, (unsigned long)m->start, (unsigned long)(m->start + m->size));
	for (size_t i = 0; i < pages; i++) {
		present += pfns[i] != 0;
		if (pfns[i] && after[i] && pfns[i] != after[i]) {
			printf("%s%lu", first ? "" : ", ", (unsigned long)(m->start + i * PAGE));
			first = 0;
			moved++;
		}
	}
	printf("], \"pages\": %ld, \"moved\": %ld, \"bad_pages\": %ld, \"t_read0\": %" PRIu64 ", \"t_read1\": %" PRIu64
	       ", \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", present, moved, bad_kept_pages(m), t_read0, t_read1, t0, t1);
}

static int migrate_op(char **f, int n)
{
	if (!strcmp(f[0], "numa"))
		op_numa(f, n);
	else if (!strcmp(f[0], "mbind"))
		op_mbind(f, n);
	else if (!strcmp(f[0], "fragment"))
		op_fragment(f, n);
	else if (!strcmp(f[0], "compact"))
		op_compact(f, n);
	else if (!strcmp(f[0], "movepid"))
		op_movepid(f, n);
	else
		return 0;
	return 1;
}

MMOPS_FAMILY(migrate) = { .op = migrate_op };
