// SPDX-License-Identifier: GPL-2.0
/*
 * mmops' mremap family: a mapping (or its head or tail) shrunk, grown, or moved, the data going
 * with it: afterwards `verify:NAME` checks the mapping where it now is.
 *
 *   mremap:NAME:OFF:OLDLEN:NEWLEN[:HOW[:DEST][:NEWNAME]]
 *       the piece [OFF, OFF+OLDLEN) of mapping NAME, to NEWLEN bytes.  HOW is
 *         keep   flags 0: shrink or grow in place (the default); the piece must end the mapping
 *         move   MREMAP_MAYMOVE: the kernel picks the new address
 *         fixed  MREMAP_MAYMOVE|MREMAP_FIXED to DEST = SLOT[+OFF2]: REGION_BASE + SLOT GiB + OFF2
 *                (slots from 8 up are never used by map)
 *       A whole mapping keeps its name where it goes; a head or tail piece that moves becomes
 *       mapping NEWNAME, and NAME keeps the rest.  Grown pages are touched afterwards (outside
 *       the operation's times), as map leaves every page.  Reports the old range as start/end,
 *       new_start/new_end, the flags, and new_huge_kb: AnonHugePages of the new range right
 *       after the call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mmops.h"

#ifndef MREMAP_MAYMOVE
#define MREMAP_MAYMOVE	1
#endif
#ifndef MREMAP_FIXED
#define MREMAP_FIXED	2
#endif

/* DEST = SLOT[+OFF2]: an address in the slot's 1 GiB region. */
static uintptr_t parse_dest(const char *s)
{
	char *end;
	unsigned long slot = strtoul(s, &end, 10);
	uintptr_t at;

	if (end == s || slot < 8 || slot > 63 || (*end && *end != '+'))
		fail("mremap", "DEST must be SLOT[+OFF] with SLOT 8..63", 0);
	at = REGION_BASE + slot * REGION_STEP;
	if (*end == '+')
		at += parse_size("mremap", end + 1);
	if (at % PAGE)
		fail("mremap", "DEST must be page-aligned", 0);
	return at;
}

/* A new shadow of `pages` pages holding `from`'s first `keep` pages, the rest 0 (touched only). */
static unsigned char *reshadow(const unsigned char *from, size_t keep, size_t pages)
{
	unsigned char *s = calloc(pages ? pages : 1, 1);

	if (!s)
		fail("mremap", "calloc", errno);
	memcpy(s, from, keep < pages ? keep : pages);
	return s;
}

static void op_mremap(char **f, int n)
{
	struct mapping *m, *dst;
	const char *how = n > 5 ? f[5] : "keep";
	const char *newname = NULL;
	uintptr_t old, want = 0;
	size_t off, old_len, new_len, off_pages;
	uint64_t t0, t1;
	int flags = 0, whole;
	void *p;

	if (n < 5)
		fail("mremap", "usage mremap:NAME:OFF:OLDLEN:NEWLEN[:keep|:move[:NEWNAME]|:fixed:DEST[:NEWNAME]]", 0);
	m = find("mremap", f[1]);
	off = parse_size("mremap", f[2]);
	old_len = parse_size("mremap", f[3]);
	new_len = parse_size("mremap", f[4]);
	if (off % PAGE || old_len % PAGE || new_len % PAGE || !old_len || !new_len || off + old_len > m->size)
		fail("mremap", "OFF, OLDLEN and NEWLEN must be page multiples inside the mapping", 0);
	whole = off == 0 && old_len == m->size;
	if (!strcmp(how, "move")) {
		flags = MREMAP_MAYMOVE;
		newname = n > 6 ? f[6] : NULL;
	} else if (!strcmp(how, "fixed")) {
		if (n < 7)
			fail("mremap", "fixed needs DEST", 0);
		flags = MREMAP_MAYMOVE | MREMAP_FIXED;
		want = parse_dest(f[6]);
		newname = n > 7 ? f[7] : NULL;
	} else if (strcmp(how, "keep")) {
		fail("mremap", "HOW must be keep, move or fixed", 0);
	}
	if (!strcmp(how, "keep") && off + old_len != m->size)
		fail("mremap", "in place, the piece must end the mapping", 0);
	if (flags && !whole && ((off && off + old_len != m->size) || !newname || nmaps == MAX_MAPS))
		fail("mremap", "a moved piece must be the mapping's head or tail and needs NEWNAME", 0);
	old = m->start + off;
	t0 = now_ns();
	p = mremap((void *)old, old_len, new_len, flags, (void *)want);
	t1 = now_ns();
	if (p == MAP_FAILED)
		fail("mremap", "mremap", errno);
	if ((flags & MREMAP_FIXED) && (uintptr_t)p != want)
		fail("mremap", "MREMAP_FIXED returned another address", 0);
	printf("{\"op\": \"mremap\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"new_start\": %lu, "
	       "\"new_end\": %lu, \"flags\": %d, \"new_huge_kb\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n",
	       m->name, (unsigned long)old, (unsigned long)(old + old_len), (unsigned long)p,
	       (unsigned long)p + new_len, flags, anon_huge_kb((uintptr_t)p, (uintptr_t)p + new_len), t0, t1);
	/* The bookkeeping: where each mapping's pages now are, and what they hold.  The old shadows
	 * are left allocated: a free() that trims the heap would be an munmap between operations. */
	off_pages = off / PAGE;
	if ((uintptr_t)p == old && off + old_len != m->size) {
		/* A head piece of the same size stays where it was: mremap did nothing. */
	} else if (whole || (uintptr_t)p == old) {
		/* NAME itself resized or moved: its piece [OFF, OFF+OLDLEN) ends it. */
		m->shadow = reshadow(m->shadow, off_pages + old_len / PAGE, off_pages + new_len / PAGE);
		m->start = (uintptr_t)p - off;
		m->size = off + new_len;
	} else {
		dst = &maps[nmaps++];
		snprintf(dst->name, sizeof(dst->name), "%s", newname);
		dst->shadow = reshadow(m->shadow + off_pages, old_len / PAGE, new_len / PAGE);
		dst->start = (uintptr_t)p;
		dst->size = new_len;
		if (off) {			/* the tail moved: the head stays */
			m->size = off;
		} else {			/* the head moved: the tail stays */
			memmove(m->shadow, m->shadow + old_len / PAGE, (m->size - old_len) / PAGE);
			m->start += old_len;
			m->size -= old_len;
		}
	}
	/* Grown pages: touched, as map leaves every page (the shadow's 0). */
	if (new_len > old_len)
		touch((uintptr_t)p + old_len, new_len - old_len);
}

static const struct mmops_op mremap_ops[] = { { "mremap", op_mremap }, { NULL, NULL } };

MMOPS_FAMILY(mremap) = { .ops = mremap_ops };
