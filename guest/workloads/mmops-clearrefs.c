// SPDX-License-Identifier: GPL-2.0
/*
 * mmops' clear_refs family: /proc/self/clear_refs, and the soft-dirty bits it clears, read back
 * from /proc/self/pagemap.
 *
 *   clearrefs:TYPE     write TYPE to /proc/self/clear_refs: 1 all, 2 anonymous, 3 file-backed
 *                      (accessed bits cleared), 4 soft-dirty bits cleared, 5 peak RSS reset.
 *                      After 4, every mapping's values are remembered, to tell written pages
 *   softdirty:NAME     the mapping's soft-dirty pages (pagemap bit 55) as `dirty`, and the pages
 *                      whose value changed since the last clearrefs:4 as `written`: bit i is the
 *                      mapping's page i.  At most 64 pages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mmops.h"

#define MAX_PAGES	64	/* one bitmap word */

/* Per mapping: 1 + each page's value at the last clearrefs:4; 0 before any. */
static unsigned short at_clear[MAX_MAPS][MAX_PAGES];

static void op_clearrefs(char **f, int n)
{
	uint64_t t0, t1;
	long type;
	int fd, err = 0;

	if (n < 2)
		fail("clearrefs", "usage clearrefs:TYPE", 0);
	type = strtol(f[1], NULL, 10);
	if (type < 1 || type > 5)
		fail("clearrefs", "TYPE must be 1..5", 0);
	fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fail("clearrefs", "open /proc/self/clear_refs", errno);
	t0 = now_ns();
	if (write(fd, f[1], strlen(f[1])) != (ssize_t)strlen(f[1]))
		err = errno;
	t1 = now_ns();
	close(fd);
	if (err)
		fail("clearrefs", "write /proc/self/clear_refs", err);
	if (type == 4)
		for (int i = 0; i < nmaps; i++)
			for (size_t p = 0; p < maps[i].size / PAGE && p < MAX_PAGES; p++)
				at_clear[i][p] = 1 + maps[i].shadow[p];
	printf("{\"op\": \"clearrefs\", \"type\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", type, t0, t1);
}

static void op_softdirty(char **f, int n)
{
	uint64_t entries[MAX_PAGES], dirty = 0, written = 0, t0, t1;
	struct mapping *m;
	size_t pages;

	if (n < 2)
		fail("softdirty", "usage softdirty:NAME", 0);
	m = find("softdirty", f[1]);
	pages = m->size / PAGE;
	if (pages > MAX_PAGES)
		fail("softdirty", "the mapping is larger than 256 KiB (the bitmaps name 64 pages)", 0);
	t0 = now_ns();
	read_pagemap("softdirty", m->start, pages, entries);
	t1 = now_ns();
	for (size_t i = 0; i < pages; i++) {
		unsigned short was = at_clear[m - maps][i];

		if (entries[i] & PM_SOFT_DIRTY)
			dirty |= 1ULL << i;
		if (was && was != 1 + m->shadow[i])
			written |= 1ULL << i;
	}
	printf("{\"op\": \"softdirty\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"dirty\": %" PRIu64
	       ", \"written\": %" PRIu64 ", \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name,
	       (unsigned long)m->start, (unsigned long)(m->start + m->size), dirty, written, t0, t1);
}

static const struct mmops_op clearrefs_ops[] = {
	{ "clearrefs", op_clearrefs }, { "softdirty", op_softdirty }, { NULL, NULL },
};

MMOPS_FAMILY(clearrefs) = { .ops = clearrefs_ops };
