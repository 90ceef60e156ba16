// SPDX-License-Identifier: GPL-2.0
/*
 * mmops' lazy-free family: MADV_FREE, the reclaim that discards what it freed, and MADV_PAGEOUT.
 * Which pages reclaim took is read from /proc/self/pagemap, page by page, and reported as bitmaps
 * (bit i of word i / 64 is the mapping's page i), so the harness can ask for each page's window.
 *
 *   free:NAME:OFF:LEN     madvise(MADV_FREE); the pages are remembered as lazily freed, with the
 *                         value each held then
 *   freereclaim:NAME      write the mapping's size to the workload's own memcg's memory.reclaim
 *                         (EAGAIN is reported, not an error); reports `gone_0`..`gone_7`: the
 *                         pages present before and neither present nor in swap after (discarded),
 *                         and checks every page: a discarded one must read zero, unless it was
 *                         written after MADV_FREE (its new data is then lost: a bad page); any
 *                         other must hold what was written last.  The mapping is not verified by
 *                         `verify` afterwards (a discarded page reads zero).  At most 2 MiB.
 *   pageout:NAME:OFF:LEN  madvise(MADV_PAGEOUT); reports `swapped_0`..`swapped_7`: the pages of the
 *                         range in swap afterwards.  At most 2 MiB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "mmops.h"

#ifndef MADV_FREE
#define MADV_FREE		8
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT		21
#endif
#define BITMAP_WORDS		8
#define MAX_PAGES		(BITMAP_WORDS * 64)	/* 2 MiB: what the bitmaps can name */

/* Static: the operations must not malloc (a heap change is an mm event inside their window). */
static uint64_t before[MAX_PAGES], after[MAX_PAGES];
/* Per mapping and page: 1 + the value it held when MADV_FREE freed it, 0 if never freed. */
static unsigned short freed_as[MAX_MAPS][MAX_PAGES];

static size_t pages_of(const char *op, size_t len)
{
	if (len / PAGE > MAX_PAGES)
		fail(op, "the range is larger than 2 MiB (the page bitmaps name 512 pages)", 0);
	return len / PAGE;
}

static void print_bitmap(const char *key, const uint64_t *bits)
{
	for (int w = 0; w < BITMAP_WORDS; w++)
		printf(", \"%s_%d\": %" PRIu64, key, w, bits[w]);
}

/* range_of's range, which must lie inside the mapping. */
static struct mapping *range_inside(char **f, int n, uintptr_t *start, size_t *len)
{
	struct mapping *m = range_of(f, n, start, len);

	if (*start + *len > m->start + m->size)
		fail(f[0], "the range is outside the mapping", 0);
	return m;
}

static void op_free(char **f, int n)
{
	struct mapping *m;
	uintptr_t start;
	size_t len;
	uint64_t t0, t1;
	int ret;

	m = range_inside(f, n, &start, &len);
	t0 = now_ns();
	ret = madvise((void *)start, len, MADV_FREE);
	t1 = now_ns();
	if (ret)
		fail("free", "madvise(MADV_FREE)", errno);
	if (m->size / PAGE <= MAX_PAGES)
		for (size_t i = (start - m->start) / PAGE; i < (start + len - m->start) / PAGE; i++)
			freed_as[m - maps][i] = 1 + m->shadow[i];
	printf("{\"op\": \"free\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"anon_huge_kb\": %ld, "
	       "\"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)start,
	       (unsigned long)(start + len), anon_huge_kb(m->start, m->start + m->size), t0, t1);
}

static void op_freereclaim(char **f, int n)
{
	uint64_t gone[BITMAP_WORDS] = { 0 };
	char path[256];
	struct mapping *m;
	long lru_gen, bad = 0, present = 0, swapped = 0;
	uint64_t t0, t1;
	size_t pages;
	int err;

	if (n < 2)
		fail("freereclaim", "usage freereclaim:NAME", 0);
	m = find("freereclaim", f[1]);
	pages = pages_of("freereclaim", m->size);
	memcg_reclaim_path("freereclaim", path, sizeof(path));
	lru_gen = lru_gen_enabled();
	read_pagemap("freereclaim", m->start, pages, before);
	err = memcg_reclaim("freereclaim", path, m->size, &t0, &t1);
	read_pagemap("freereclaim", m->start, pages, after);
	for (size_t i = 0; i < pages; i++) {
		uintptr_t page = m->start + i * PAGE;
		int discarded = (before[i] & PM_PRESENT) && !(after[i] & (PM_PRESENT | PM_SWAPPED));
		unsigned short was = freed_as[m - maps][i];
		/* Written since MADV_FREE: its value changed (the scripts write new values). */
		int rewritten = was && was != 1 + m->shadow[i];

		present += !!(after[i] & PM_PRESENT);
		swapped += !!(after[i] & PM_SWAPPED);
		if (discarded)
			gone[i / 64] |= 1ULL << (i % 64);
		if (discarded ? rewritten || !page_is(page, 0, 0) : !page_holds(page, m->shadow[i]))
			bad++;
	}
	printf("{\"op\": \"freereclaim\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"lru_gen\": %ld, "
	       "\"errno\": %d, \"present\": %ld, \"swapped\": %ld, \"bad_pages\": %ld", m->name,
	       (unsigned long)m->start, (unsigned long)(m->start + m->size), lru_gen, err, present, swapped, bad);
	print_bitmap("gone", gone);
	printf(", \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", t0, t1);
}

static void op_pageout(char **f, int n)
{
	uint64_t out[BITMAP_WORDS] = { 0 };
	struct mapping *m;
	uintptr_t start;
	size_t len, pages;
	uint64_t t0, t1;
	int ret;

	m = range_inside(f, n, &start, &len);
	pages = pages_of("pageout", len);
	if (!swap_active())
		fail("pageout", "no swap is active: anonymous pages cannot be paged out", 0);
	t0 = now_ns();
	ret = madvise((void *)start, len, MADV_PAGEOUT);
	t1 = now_ns();
	if (ret)
		fail("pageout", "madvise(MADV_PAGEOUT)", errno);
	read_pagemap("pageout", start, pages, after);
	for (size_t i = 0; i < pages; i++)
		if (after[i] & PM_SWAPPED)
			out[i / 64] |= 1ULL << (i % 64);
	printf("{\"op\": \"pageout\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"anon_huge_kb\": %ld",
	       m->name, (unsigned long)start, (unsigned long)(start + len), anon_huge_kb(m->start, m->start + m->size));
	print_bitmap("swapped", out);
	printf(", \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", t0, t1);
}

static const struct mmops_op madvfree_ops[] = {
	{ "free", op_free }, { "freereclaim", op_freereclaim }, { "pageout", op_pageout }, { NULL, NULL },
};

MMOPS_FAMILY(madvfree) = { .ops = madvfree_ops };
