// SPDX-License-Identifier: GPL-2.0
/*
 * mmops operations: collapsing shmem (memfd) and anonymous ranges into THPs with MADV_COLLAPSE
 * (mm/khugepaged.c madvise_collapse).
 *
 *   shmap:NAME:SIZE:shared|private[:OF]
 *        mmap a memfd at the next 1 GiB-spaced address (2 MiB aligned): a new one of SIZE whose every
 *        page holds what mmops calls a touched page (a 1, then zeros), or with OF the memfd of the
 *        shmap mapping OF (a second mapping of the same file).  shmem_enabled must be never or
 *        advise (the faults then allocate small pages) and is left as it is: MADV_COLLAPSE ignores
 *        it (but deny).  shared: every page is written once (do_shared_fault maps exactly that page,
 *        no fault-around).  private: the first page of the last 2 MiB block is written first (a
 *        private copy: the VMA gets an anon_vma), then every other page is read (the page cache's
 *        page mapped read-only).  Prints the file (the maps index of its first mapping) and the
 *        private page (anon_page, 0 if none).
 *   collapse:NAME:OFF:LEN
 *        madvise(MADV_COLLAPSE); on a mapping that is not a shmap one, MADV_HUGEPAGE over the whole
 *        mapping first (MADV_COLLAPSE refuses VM_NOHUGEPAGE), with transparent_hugepage/enabled
 *        "never" around both (restored after).  Its errno is reported, not a failure, with the
 *        mapping's ShmemPmdMapped and AnonHugePages afterwards.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mmops.h"

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

/* Per maps[] index: the memfd of a shmap mapping (-1: not one), and the file it maps. */
static struct {
	int fd;
	int file;
} shm[MAX_MAPS];
static int shm_init;

static void init_shm(void)
{
	if (shm_init)
		return;
	for (int i = 0; i < MAX_MAPS; i++)
		shm[i].fd = -1;
	shm_init = 1;
}

/* The faults must allocate small pages: shmem_enabled never, or advise (no MADV_HUGEPAGE here). */
static void require_small_shmem_faults(void)
{
	const char *at;

	if (read_file("/sys/kernel/mm/transparent_hugepage/shmem_enabled") <= 0)
		return;		/* no THP for shmem at all */
	at = strchr(scratch, '[');
	if (!at || (strncmp(at, "[never]", 7) && strncmp(at, "[advise]", 8)))
		fail("shmap", "shmem_enabled is neither never nor advise: faults would allocate huge pages", 0);
}

/* A new memfd of `size` bytes whose every page is a touched page. */
static int new_memfd(const char *name, size_t size)
{
	static unsigned char page[PAGE] = { 1 };
	int fd = memfd_create(name, MFD_CLOEXEC);

	if (fd < 0)
		fail("shmap", "memfd_create", errno);
	if (ftruncate(fd, size))
		fail("shmap", "ftruncate", errno);
	for (size_t off = 0; off < size; off += PAGE)
		if (pwrite(fd, page, PAGE, off) != (ssize_t)PAGE)
			fail("shmap", "pwrite", errno);
	return fd;
}

static void op_shmap(char **f, int n)
{
	struct mapping *m;
	int shared, file, fd, idx;
	size_t size;
	uintptr_t anon_page = 0;
	uint64_t t0, t1;
	void *p;

	if (n < 4)
		fail("shmap", "usage shmap:NAME:SIZE:shared|private[:OF]", 0);
	init_shm();
	shared = !strcmp(f[3], "shared");
	if (!shared && strcmp(f[3], "private"))
		fail("shmap", "the mode is shared or private", 0);
	size = parse_size("shmap", f[2]);
	if (!size || size % HPAGE)
		fail("shmap", "SIZE must be a multiple of 2 MiB", 0);
	idx = nmaps;
	m = new_mapping("shmap", f[1], size);
	if (n > 4) {
		struct mapping *of = find("shmap", f[4]);

		file = (int)(of - maps);
		if (shm[file].fd < 0 || of->size < m->size)
			fail("shmap", "OF is not a shmap mapping of at least SIZE", 0);
		file = shm[file].file;
		fd = shm[file].fd;
	} else {
		char name[32];

		require_small_shmem_faults();
		snprintf(name, sizeof(name), "nh-%s", m->name);
		file = idx;
		fd = new_memfd(name, m->size);
	}
	t0 = now_ns();
	p = mmap((void *)m->start, m->size, PROT_READ | PROT_WRITE, (shared ? MAP_SHARED : MAP_PRIVATE) |
		 MAP_FIXED_NOREPLACE, fd, 0);
	if (p == MAP_FAILED || (uintptr_t)p != m->start)
		fail("shmap", "mmap", errno);
	if (shared) {
		touch(m->start, m->size);
	} else {
		/* The private copy first: a read fault's fault-around would map the file's page there. */
		anon_page = m->start + m->size - HPAGE;
		*(volatile char *)anon_page = 1;
		for (uintptr_t a = m->start; a < m->start + m->size; a += PAGE)
			if (a != anon_page)
				(void)*(volatile char *)a;
	}
	t1 = now_ns();
	shm[idx].fd = fd;
	shm[idx].file = file;
	nmaps++;
	printf("{\"op\": \"shmap\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"shared\": %d, \"file\": %d, "
	       "\"anon_page\": %lu, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)m->start,
	       (unsigned long)(m->start + m->size), shared, file, (unsigned long)anon_page, t0, t1);
}

#define THP_ENABLED "/sys/kernel/mm/transparent_hugepage/enabled"

/* The bracketed choice of a THP sysfs file into `out`; -1 if it has none. */
static int thp_choice(const char *path, char out[16])
{
	char *lb, *rb;

	if (read_file(path) <= 0 || !(lb = strchr(scratch, '[')) || !(rb = strchr(lb, ']')) ||
	    rb - lb - 1 >= 16)
		return -1;
	snprintf(out, 16, "%.*s", (int)(rb - lb - 1), lb + 1);
	return 0;
}

static void op_collapse(char **f, int n)
{
	struct mapping *m;
	uintptr_t start;
	size_t len;
	uint64_t t0, t1;
	char enabled[16];
	int err = 0, anon;

	init_shm();
	m = range_of(f, n, &start, &len);
	anon = shm[m - maps].fd < 0;
	/*
	 * An anonymous range: MADV_HUGEPAGE would register the mm with khugepaged, and wake it when
	 * no other mm is registered: it may collapse the range before MADV_COLLAPSE does.  With THP
	 * "never" khugepaged is stopped and registers nothing, and MADV_COLLAPSE ignores the setting.
	 */
	if (anon && (thp_choice(THP_ENABLED, enabled) || write_str(THP_ENABLED, "never")))
		fail("collapse", "setting " THP_ENABLED " to never", errno);
	if (anon && madvise((void *)m->start, m->size, MADV_HUGEPAGE))
		err = errno;
	t0 = now_ns();
	if (!err && madvise((void *)start, len, MADV_COLLAPSE))
		err = errno;
	t1 = now_ns();
	if (anon && write_str(THP_ENABLED, enabled))
		fail("collapse", "restoring " THP_ENABLED, errno);
	printf("{\"op\": \"collapse\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"errno\": %d, "
	       "\"shmem_pmd_kb\": %ld, \"anon_huge_kb\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n",
	       m->name, (unsigned long)start, (unsigned long)(start + len), err,
	       smaps_kb("ShmemPmdMapped:", m->start, m->start + m->size), anon_huge_kb(m->start, m->start + m->size),
	       t0, t1);
}

static const struct mmops_op collapse_ops[] = { { "shmap", op_shmap }, { "collapse", op_collapse }, { NULL, NULL } };

MMOPS_FAMILY(collapse) = { .ops = collapse_ops };
