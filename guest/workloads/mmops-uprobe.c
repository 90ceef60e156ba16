// SPDX-License-Identifier: GPL-2.0
/*
 * mmops operations: a uprobe on the workload's own text, through tracefs (kernel/events/uprobes.c).
 *
 *   uprobe-on     define the uprobe event nhup/mmops_PID on the first instruction of uprobe_target()
 *                 (the first byte of a text page of this very binary) and enable it: uprobe_register()
 *                 writes the breakpoint into every mm mapping the file (__replace_page: the file's page
 *                 replaced by an anonymous copy holding int3); then call the target 3 times
 *   uprobe-off    disable the event (uprobe_unregister(): the original page back) and remove it
 *
 * Both print the probed page [start, end), the probed address (vaddr), its file offset, the
 * instruction's first byte before the probe (orig) and as read now (byte: 0xcc while the probe is
 * on), how often the target ran (calls) and the hits uprobe_profile counted (-1 if unread).
 * t0..t1 brackets the enable (and the calls) or the disable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mmops.h"

#define TRACING "/sys/kernel/tracing/"
#define CALLS 3

/* Page-aligned, so that the probe sits at the first byte of a page on every kernel: 6.1 passes
 * the probe's own address (not its page) to __replace_page's notifier range. */
__attribute__((noinline, aligned(4096))) int uprobe_target(int x)
{
	return x * 3 + 1;
}

static struct {
	char event[32];		/* "mmops_PID" in group nhup; empty while none is defined */
	uintptr_t vaddr;
	unsigned long offset;
	int orig;
	int calls;
} up;

static int (*volatile target_fn)(int) = uprobe_target;

static int first_byte(void)
{
	return *(volatile unsigned char *)up.vaddr;
}

/* The file offset of vaddr, from the VMA of /proc/self/maps that maps it. */
static unsigned long file_offset(const char *op, uintptr_t vaddr)
{
	if (read_file("/proc/self/maps") < 0)
		fail(op, "read /proc/self/maps", errno);
	for (char *p = scratch; p && *p; p = next_line(p)) {
		unsigned long s, e, off;

		if (sscanf(p, "%lx-%lx %*4s %lx", &s, &e, &off) == 3 && s <= vaddr && vaddr < e)
			return vaddr - s + off;
	}
	fail(op, "the target's address is in no VMA of /proc/self/maps", 0);
	return 0;
}

/* The event's hits in uprobe_profile ("  PATH EVENT HITS" per line), or -1. */
static long profile_hits(void)
{
	size_t len = strlen(up.event);

	if (read_file(TRACING "uprobe_profile") < 0)
		return -1;
	for (char *p = scratch; p && *p; p = next_line(p)) {
		char *at = strstr(p, up.event);
		char *nl = strchr(p, '\n');

		if (at && at > scratch && (!nl || at < nl) && at[-1] == ' ' && at[len] == ' ')
			return strtol(at + len, NULL, 10);
	}
	return -1;
}

static int enable_event(int on)
{
	char path[128];

	snprintf(path, sizeof(path), TRACING "events/nhup/%s/enable", up.event);
	return write_str(path, on ? "1" : "0");
}

static void report(const char *op, long hits, uint64_t t0, uint64_t t1)
{
	uintptr_t page = up.vaddr & ~(PAGE - 1);

	printf("{\"op\": \"%s\", \"start\": %lu, \"end\": %lu, \"vaddr\": %lu, \"offset\": %lu, \"orig\": %d, "
	       "\"byte\": %d, \"calls\": %d, \"hits\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", op,
	       (unsigned long)page, (unsigned long)(page + PAGE), (unsigned long)up.vaddr, up.offset, up.orig,
	       first_byte(), up.calls, hits, t0, t1);
}

static void op_uprobe_on(char **f, int n)
{
	char exe[256], def[512];
	ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	uint64_t t0, t1;

	(void)f;
	(void)n;
	if (up.event[0])
		fail("uprobe-on", "a uprobe is on already", 0);
	if (len <= 0)
		fail("uprobe-on", "readlink /proc/self/exe", errno);
	exe[len] = 0;
	up.vaddr = (uintptr_t)target_fn;
	up.offset = file_offset("uprobe-on", up.vaddr);
	up.orig = first_byte();
	snprintf(up.event, sizeof(up.event), "mmops_%d", getpid());
	snprintf(def, sizeof(def), "p:nhup/%s %s:0x%lx", up.event, exe, up.offset);
	/* Appended (no O_TRUNC): truncating uprobe_events would remove every uprobe event. */
	if (write_str(TRACING "uprobe_events", def))
		fail("uprobe-on", "defining the event in " TRACING "uprobe_events", errno);
	t0 = now_ns();
	if (enable_event(1))
		fail("uprobe-on", "enabling the event", errno);
	for (int i = 0; i < CALLS; i++)
		up.calls += target_fn(i) > 0;
	t1 = now_ns();
	report("uprobe-on", profile_hits(), t0, t1);
}

static void op_uprobe_off(char **f, int n)
{
	char undef[64];
	long hits = profile_hits();
	uint64_t t0, t1;
	int err;

	(void)f;
	(void)n;
	if (!up.event[0])
		fail("uprobe-off", "no uprobe is on", 0);
	t0 = now_ns();
	err = enable_event(0) ? errno : 0;
	t1 = now_ns();
	if (err)
		fail("uprobe-off", "disabling the event", err);
	snprintf(undef, sizeof(undef), "-:nhup/%s", up.event);
	if (write_str(TRACING "uprobe_events", undef))
		fail("uprobe-off", "removing the event", errno);
	report("uprobe-off", hits, t0, t1);
	up.event[0] = 0;
}

static const struct mmops_op uprobe_ops[] = {
	{ "uprobe-on", op_uprobe_on }, { "uprobe-off", op_uprobe_off }, { NULL, NULL },
};

MMOPS_FAMILY(uprobe) = { .ops = uprobe_ops };
