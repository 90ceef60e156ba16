// SPDX-License-Identifier: GPL-2.0
/*
 * mmops' hugetlb mappings (2 MiB pages from the pool vm.nr_hugepages reserves): anonymous
 * MAP_HUGETLB or a file on a hugetlbfs mount, private or shared, faulted, unmapped, dropped,
 * protected, forked and copied on write, moved; a shared file mapped twice at 1 GiB-aligned
 * addresses shares its PMD pages between the two mappings.
 *
 *   hmap:NAME:SIZE:private|shared[:noreserve]
 *                              mmap(MAP_HUGETLB | MAP_ANONYMOUS) at map NAME's fixed address (1 GiB
 *                              aligned); nothing is touched
 *   hfile:NAME:PATH:SIZE:private|shared[:noreserve]
 *                              the same for PATH on a hugetlbfs mount (created, grown to SIZE)
 *   htouch:NAME:OFF:LEN:VAL    write byte VAL over [OFF, OFF+LEN) through the mapping (faults)
 *   hverify:NAME:OFF:LEN       compare [OFF, OFF+LEN) with what was written; reports bad_pages
 *   hunmap:NAME:OFF:LEN        munmap
 *   hdontneed:NAME:OFF:LEN     madvise(MADV_DONTNEED)
 *   hprotect:NAME:OFF:LEN:PROT mprotect, PROT r, rw or none
 *   hcow:NAME:OFF:VAL          fork; the parent writes VAL over the huge page at OFF while the child
 *                              keeps it, then the child checks its copy still holds the old bytes
 *                              (bad_pages: its pages that did not); reports the pool's unreserved
 *                              free pages before the write
 *   hmremap:NAME:OFF:LEN:NEW   mremap(MREMAP_MAYMOVE | MREMAP_FIXED) of [OFF, OFF+LEN) to the address
 *                              of a new map NEW
 *   hfill:NAME                 a private mapping NAME reserving every unreserved free page of the pool
 *   hsteal:NAME:OFF:VAL:NHCTL  (with --no-probe) fork; attach the probe to the child (NHCTL attach
 *                              CHILD --hold); the parent, owner of the private mapping's reservation,
 *                              writes VAL over the huge page at OFF with no page free to copy it
 *                              into, so the kernel takes the page from the child instead
 *                              (unmap_ref_private); reports the child's hugetlb kB there afterwards
 *
 * OFF and LEN are whole huge pages.  What each 4 KiB page should hold is kept per mapping (0:
 * zeros); a write through a shared mapping is remembered for every shared mapping of that file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mmops.h"

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif
#define POOL "/sys/kernel/mm/hugepages/hugepages-2048kB/"

/* Per mapping (by its index in maps[]): what it maps. */
static struct {
	int is_huge;
	int shared;
	long file;		/* the file's inode; anonymous mappings each a file of their own (negative) */
	size_t file_off;	/* the file offset the mapping starts at */
} huge[MAX_MAPS];

static size_t huge_pages(const char *op, const char *s)
{
	return parse_aligned(op, s, HPAGE, "offsets and lengths are whole 2 MiB pages");
}

static struct mapping *huge_map(const char *op, const char *name)
{
	struct mapping *m = find(op, name);

	if (!huge[m - maps].is_huge)
		fail(op, "not a hugetlb mapping (hmap, hfile)", 0);
	return m;
}

static void report(const char *op, struct mapping *m, uintptr_t start, uintptr_t end, uint64_t t0, uint64_t t1)
{
	printf("{\"op\": \"%s\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"shared\": %d, \"t0\": %" PRIu64
	       ", \"t1\": %" PRIu64 "}\n", op, m->name, (unsigned long)start, (unsigned long)end, huge[m - maps].shared,
	       t0, t1);
}

/* hmap:NAME:SIZE:KIND[:noreserve] and hfile:NAME:PATH:SIZE:KIND[:noreserve]. */
static void op_hmap(char **f, int n)
{
	const char *op = f[0];
	int file = !strcmp(op, "hfile"), args = file ? 5 : 4;
	int shared, flags, fd = -1;
	struct mapping *m;
	struct stat st;
	uint64_t t0, t1;
	void *p;

	if (n < args)
		fail(op, "usage hmap:NAME:SIZE:private|shared[:noreserve] | hfile:NAME:PATH:SIZE:private|shared[:noreserve]",
		     0);
	shared = !strcmp(f[args - 1], "shared");
	if (!shared && strcmp(f[args - 1], "private"))
		fail(op, "KIND is private or shared", 0);
	m = new_mapping(op, f[1], huge_pages(op, f[args - 2]));
	flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED_NOREPLACE;
	if (n > args && !strcmp(f[args], "noreserve"))
		flags |= MAP_NORESERVE;
	t0 = now_ns();
	if (file) {
		fd = open(f[2], O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (fd < 0 || fstat(fd, &st))
			fail(op, "open", errno);
		if ((size_t)st.st_size < m->size && ftruncate(fd, m->size))
			fail(op, "ftruncate", errno);
	} else {
		flags |= MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB;
	}
	p = mmap((void *)m->start, m->size, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (p == MAP_FAILED || (uintptr_t)p != m->start)
		fail(op, "mmap", errno);
	t1 = now_ns();
	if (fd >= 0)
		close(fd);
	huge[nmaps].is_huge = 1;
	huge[nmaps].shared = shared;
	huge[nmaps].file = file ? (long)st.st_ino : -1 - nmaps;
	nmaps++;
	report(op, m, m->start, m->start + m->size, t0, t1);
}

/* Remember VAL for [off, off+len) of m, and of every shared mapping of the same file there. */
static void remember(struct mapping *m, size_t off, size_t len, int val)
{
	int i = m - maps;
	size_t foff = huge[i].file_off + off;

	memset(m->shadow + off / PAGE, val, len / PAGE);
	if (!huge[i].shared)
		return;
	for (int j = 0; j < nmaps; j++) {
		size_t lo, hi;

		if (j == i || !huge[j].is_huge || !huge[j].shared || huge[j].file != huge[i].file)
			continue;
		lo = foff > huge[j].file_off ? foff : huge[j].file_off;
		hi = foff + len < huge[j].file_off + maps[j].size ? foff + len : huge[j].file_off + maps[j].size;
		if (lo < hi)
			memset(maps[j].shadow + (lo - huge[j].file_off) / PAGE, val, (hi - lo) / PAGE);
	}
}

/* htouch, hverify, hunmap, hdontneed, hprotect: NAME:OFF:LEN on one mapping. */
static void op_range_huge(char **f, int n)
{
	const char *op = f[0];
	struct mapping *m;
	size_t off, len;
	uintptr_t start;
	uint64_t t0, t1;
	long bad = 0;
	int ret = 0, val = 0;

	if (n < 4 || ((!strcmp(op, "htouch") || !strcmp(op, "hprotect")) && n < 5))
		fail(op, "usage OP:NAME:OFF:LEN (htouch :VAL, hprotect :PROT)", 0);
	m = huge_map(op, f[1]);
	off = huge_pages(op, f[2]);
	len = huge_pages(op, f[3]);
	if (off + len > m->size)
		fail(op, "past the end of the mapping", 0);
	start = m->start + off;
	if (!strcmp(op, "htouch")) {
		val = strtol(f[4], NULL, 0);
		if (val < 1 || val > 255)
			fail(op, "VAL must be 1..255", 0);
	}
	t0 = now_ns();
	if (!strcmp(op, "htouch")) {
		memset((void *)start, val, len);
	} else if (!strcmp(op, "hverify")) {
		for (size_t i = off / PAGE; i < (off + len) / PAGE; i++)
			bad += !page_is(m->start + i * PAGE, m->shadow[i], m->shadow[i]);
	} else if (!strcmp(op, "hunmap")) {
		ret = munmap((void *)start, len);
	} else if (!strcmp(op, "hdontneed")) {
		ret = madvise((void *)start, len, MADV_DONTNEED);
	} else if (!strcmp(op, "hprotect")) {
		ret = mprotect((void *)start, len, prot_of(op, f[4]));
	}
	t1 = now_ns();
	if (ret)
		fail(op, op, errno);
	if (!strcmp(op, "htouch"))
		remember(m, off, len, val);
	else if (!strcmp(op, "hdontneed") && !huge[m - maps].shared)
		memset(m->shadow + off / PAGE, 0, len / PAGE);	/* private copies dropped: zeros again */
	printf("{\"op\": \"%s\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"prot\": \"%s\", \"value\": %d, "
	       "\"bad_pages\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", op, m->name, (unsigned long)start,
	       (unsigned long)(start + len), !strcmp(op, "hprotect") ? f[4] : "", val, bad, t0, t1);
}

static long pool(const char *name)
{
	char path[128];

	snprintf(path, sizeof(path), POOL "%s", name);
	return read_long(path);
}

static void op_hcow(char **f, int n)
{
	struct mapping *m;
	uintptr_t addr;
	uint64_t t0, t_fork, t_write, t1;
	int pipefd[2], status, val;
	long free_huge;
	unsigned char old;
	char c = 0;
	pid_t child;

	if (n < 4)
		fail("hcow", "usage hcow:NAME:OFF:VAL", 0);
	m = huge_map("hcow", f[1]);
	addr = m->start + huge_pages("hcow", f[2]);
	val = strtol(f[3], NULL, 0);
	if (val < 1 || val > 255 || addr >= m->start + m->size)
		fail("hcow", "VAL must be 1..255, OFF inside the mapping", 0);
	old = m->shadow[(addr - m->start) / PAGE];
	if (pipe(pipefd))
		fail("hcow", "pipe", errno);
	fflush(stdout);
	t0 = now_ns();
	child = fork();
	if (child < 0)
		fail("hcow", "fork", errno);
	if (child == 0) {
		const unsigned char *p = (const unsigned char *)addr;

		int bad = 0;

		/* Keep the page shared until the parent has written it, then count this copy's 4 KiB
		 * pages that lost the old bytes (the exit status: at most 255). */
		if (read(pipefd[0], &c, 1) != 1)
			_exit(255);
		for (size_t i = 0; i < HPAGE / PAGE; i++)
			for (size_t j = 0; j < PAGE; j += 512)
				if (p[i * PAGE + j] != old) {
					bad++;
					break;
				}
		_exit(bad > 254 ? 254 : bad);
	}
	t_fork = now_ns();
	free_huge = pool("free_hugepages") - pool("resv_hugepages");
	memset((void *)addr, val, HPAGE);
	t_write = now_ns();
	if (write(pipefd[1], &c, 1) != 1 || waitpid(child, &status, 0) != child)
		fail("hcow", "child", errno);
	t1 = now_ns();
	close(pipefd[0]);
	close(pipefd[1]);
	remember(m, addr - m->start, HPAGE, val);
	/* bad_pages: the child's copy, as the child counted it (all of it if the child died). */
	printf("{\"op\": \"hcow\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"child\": %d, \"free_huge\": %ld, "
	       "\"bad_pages\": %d, \"t0\": %" PRIu64 ", \"t_fork\": %" PRIu64 ", \"t_write\": %" PRIu64
	       ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)addr, (unsigned long)(addr + HPAGE), child,
	       free_huge, WIFEXITED(status) ? WEXITSTATUS(status) : (int)(HPAGE / PAGE), t0, t_fork, t_write, t1);
}

static void op_hmremap(char **f, int n)
{
	struct mapping *m, *to;
	size_t off, len;
	uint64_t t0, t1;
	int i;
	void *p;

	if (n < 5)
		fail("hmremap", "usage hmremap:NAME:OFF:LEN:NEW", 0);
	m = huge_map("hmremap", f[1]);
	off = huge_pages("hmremap", f[2]);
	len = huge_pages("hmremap", f[3]);
	if (!len || off + len > m->size)
		fail("hmremap", "an empty range, or past the end of the mapping", 0);
	i = m - maps;
	to = new_mapping("hmremap", f[4], len);
	t0 = now_ns();
	p = mremap((void *)(m->start + off), len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)to->start);
	t1 = now_ns();
	if (p == MAP_FAILED || (uintptr_t)p != to->start)
		fail("hmremap", "mremap", errno);
	memcpy(to->shadow, m->shadow + off / PAGE, len / PAGE);
	huge[nmaps] = huge[i];
	huge[nmaps].file_off = huge[i].file_off + off;
	nmaps++;
	printf("{\"op\": \"hmremap\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"new_start\": %lu, "
	       "\"new_end\": %lu, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)(m->start + off),
	       (unsigned long)(m->start + off + len), (unsigned long)to->start, (unsigned long)(to->start + len), t0, t1);
}

/* hfill:NAME: reserve what is left of the pool, so that a COW finds no page to copy into. */
static void op_hfill(char **f, int n)
{
	struct mapping *m;
	long pages;
	uint64_t t0, t1;
	void *p;

	if (n < 2)
		fail("hfill", "usage hfill:NAME", 0);
	pages = pool("free_hugepages") - pool("resv_hugepages");
	if (pages < 1)
		fail("hfill", "no unreserved huge page is free", 0);
	m = new_mapping("hfill", f[1], pages * HPAGE);
	t0 = now_ns();
	p = mmap((void *)m->start, m->size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB | MAP_FIXED_NOREPLACE, -1, 0);
	t1 = now_ns();
	if (p == MAP_FAILED || (uintptr_t)p != m->start)
		fail("hfill", "mmap", errno);
	huge[nmaps].is_huge = 1;
	huge[nmaps].file = -1 - nmaps;
	nmaps++;
	printf("{\"op\": \"hfill\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"shared\": 0, \"t0\": %" PRIu64
	       ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)m->start, (unsigned long)(m->start + m->size), t0, t1);
}

/* A process's hugetlb kB (Private_ and Shared_Hugetlb in its smaps) in the VMA at addr, or -1. */
static long hugetlb_kb_of(pid_t pid, uintptr_t addr)
{
	char path[64];
	long total = -1;
	int inside = 0;

	snprintf(path, sizeof(path), "/proc/%d/smaps", pid);
	if (read_file(path) < 0)
		return -1;
	for (char *p = scratch; p && *p; p = next_line(p)) {
		unsigned long s, e;

		if (sscanf(p, "%lx-%lx ", &s, &e) == 2) {
			inside = s <= addr && addr < e;
			if (inside)
				total = 0;
		} else if (inside && (!strncmp(p, "Private_Hugetlb:", 16) || !strncmp(p, "Shared_Hugetlb:", 15))) {
			total += strtol(strchr(p, ':') + 1, NULL, 10);
		}
	}
	return total;
}

static void op_hsteal(char **f, int n)
{
	struct mapping *m;
	uintptr_t addr;
	uint64_t t0, t1;
	int go[2], status, val, devnull;
	long free_huge, child_kb;
	char pid[16], c;
	pid_t child, attach;

	if (n < 5)
		fail("hsteal", "usage hsteal:NAME:OFF:VAL:NHCTL", 0);
	m = huge_map("hsteal", f[1]);
	addr = m->start + huge_pages("hsteal", f[2]);
	val = strtol(f[3], NULL, 0);
	if (val < 1 || val > 255 || addr >= m->start + m->size || huge[m - maps].shared)
		fail("hsteal", "VAL must be 1..255, OFF inside a private mapping", 0);
	if (pipe(go))
		fail("hsteal", "pipe", errno);
	fflush(stdout);
	child = fork();
	if (child < 0)
		fail("hsteal", "fork", errno);
	if (child == 0) {
		/* Touch nothing (the page will be gone: a fault would kill us); leave when the parent says. */
		close(go[1]);
		while (read(go[0], &c, 1) > 0)
			;
		_exit(0);
	}
	close(go[0]);
	snprintf(pid, sizeof(pid), "%d", child);
	attach = fork();
	if (attach == 0) {
		devnull = open("/dev/null", O_WRONLY);
		if (devnull < 0 || dup2(devnull, STDOUT_FILENO) < 0)
			_exit(126);
		execl(f[4], "nhctl", "attach", pid, "--hold", (char *)NULL);
		_exit(127);
	}
	if (attach < 0 || waitpid(attach, &status, 0) != attach || !WIFEXITED(status) || WEXITSTATUS(status))
		fail("hsteal", "attaching the probe to the child failed", 0);
	free_huge = pool("free_hugepages") - pool("resv_hugepages");
	t0 = now_ns();
	memset((void *)addr, val, HPAGE);
	t1 = now_ns();
	child_kb = hugetlb_kb_of(child, addr);
	close(go[1]);
	if (waitpid(child, &status, 0) != child)
		fail("hsteal", "child", errno);
	remember(m, addr - m->start, HPAGE, val);
	printf("{\"op\": \"hsteal\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"child\": %d, \"free_huge\": %ld, "
	       "\"child_huge_kb\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)addr,
	       (unsigned long)(addr + HPAGE), child, free_huge, child_kb, t0, t1);
}

static const struct mmops_op hugetlb_ops[] = {
	{ "hmap", op_hmap }, { "hfile", op_hmap },
	{ "htouch", op_range_huge }, { "hverify", op_range_huge }, { "hunmap", op_range_huge },
	{ "hdontneed", op_range_huge }, { "hprotect", op_range_huge },
	{ "hcow", op_hcow }, { "hmremap", op_hmremap }, { "hfill", op_hfill }, { "hsteal", op_hsteal },
	{ NULL, NULL },
};

MMOPS_FAMILY(hugetlb) = { .ops = hugetlb_ops };
