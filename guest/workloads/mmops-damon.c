// SPDX-License-Identifier: GPL-2.0
/*
 * mmops' DAMON family: DAMON monitoring the workload itself, through the sysfs interface
 * (/sys/kernel/mm/damon/admin, CONFIG_DAMON_SYSFS with CONFIG_DAMON_VADDR and CONFIG_DAMON_PADDR).
 *
 *   damon:MS:NAME[:NAME...]   two kdamonds for MS milliseconds, sampling every 5 ms, while the
 *                             workload keeps reading the first half of each named mapping:
 *                               0: virtual addresses of this process, one initial region per mapping;
 *                               1: physical addresses, one region per frame of the first pages of
 *                                  each mapping's second half (the half nobody reads);
 *                             then stopped and removed.  Reports both kdamonds' pids.
 *
 * Each sample makes one address per region old (vaddr: damon_ptep_mkold / damon_pmdp_mkold;
 * paddr: the same through an rmap walk, damon_folio_mkold_one: clear_young) and checks it at the
 * next (vaddr: damon_young_pmd_entry; paddr: damon_folio_young_one: test_young when the entry is
 * still old).  The update interval is longer than the run, so DAMON never replaces the vaddr
 * regions given with its own three-region guess of the address space.
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

#define KDAMONDS	"/sys/kernel/mm/damon/admin/kdamonds"
#define SAMPLE_US	"5000"
#define PA_PAGES	8	/* frames per mapping the paddr kdamond watches */
#define PM_PRESENT	(1ULL << 63)
#define PM_PFN_MASK	((1ULL << 55) - 1)

static char failed_path[192];

/* Write one file under kdamond `kd`'s directory; its path when that fails. */
static const char *kd_write(int kd, const char *file, const char *value)
{
	snprintf(failed_path, sizeof(failed_path), KDAMONDS "/%d/%s", kd, file);
	return write_str(failed_path, value) ? failed_path : NULL;
}

/* kdamond `kd` with one context of `ops` over `n` regions [starts[i], ends[i]) of this process. */
static const char *kd_setup(int kd, const char *ops, const unsigned long *starts, const unsigned long *ends, int n)
{
	char file[96], value[32];
	const char *bad;

	if ((bad = kd_write(kd, "contexts/nr_contexts", "1")) ||
	    (bad = kd_write(kd, "contexts/0/operations", ops)) ||
	    (bad = kd_write(kd, "contexts/0/monitoring_attrs/intervals/sample_us", SAMPLE_US)) ||
	    (bad = kd_write(kd, "contexts/0/monitoring_attrs/intervals/aggr_us", "100000")) ||
	    (bad = kd_write(kd, "contexts/0/monitoring_attrs/intervals/update_us", "60000000")) ||
	    /* paddr's regions are single frames, which cannot be split further */
	    (bad = kd_write(kd, "contexts/0/monitoring_attrs/nr_regions/min", strcmp(ops, "vaddr") ? "3" : "10")) ||
	    (bad = kd_write(kd, "contexts/0/monitoring_attrs/nr_regions/max", "100")) ||
	    (bad = kd_write(kd, "contexts/0/targets/nr_targets", "1")))
		return bad;
	if (!strcmp(ops, "vaddr")) {
		snprintf(value, sizeof(value), "%d", getpid());
		if ((bad = kd_write(kd, "contexts/0/targets/0/pid_target", value)))
			return bad;
	}
	snprintf(value, sizeof(value), "%d", n);
	if ((bad = kd_write(kd, "contexts/0/targets/0/regions/nr_regions", value)))
		return bad;
	for (int i = 0; i < n; i++) {
		snprintf(file, sizeof(file), "contexts/0/targets/0/regions/%d/start", i);
		snprintf(value, sizeof(value), "%lu", starts[i]);
		if ((bad = kd_write(kd, file, value)))
			return bad;
		snprintf(file, sizeof(file), "contexts/0/targets/0/regions/%d/end", i);
		snprintf(value, sizeof(value), "%lu", ends[i]);
		if ((bad = kd_write(kd, file, value)))
			return bad;
	}
	return NULL;
}

static int cmp_ulong(const void *a, const void *b)
{
	unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;

	return x < y ? -1 : x > y;
}

/* The physical addresses of the first PA_PAGES pages of each mapping's second half, sorted and
 * without repeats (a THP's pages share one folio: its head frame stands for it); their count. */
static int second_half_frames(struct mapping **targets, int ntargets, unsigned long *frames)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC), n = 0, out = 0;

	if (fd < 0)
		fail("damon", "open /proc/self/pagemap", errno);
	for (int t = 0; t < ntargets; t++) {
		uintptr_t half = targets[t]->start + targets[t]->size / 2;

		for (int i = 0; i < PA_PAGES; i++) {
			uint64_t entry = 0;

			if (pread(fd, &entry, sizeof(entry), (half / PAGE + i) * sizeof(entry)) != sizeof(entry))
				fail("damon", "read /proc/self/pagemap", errno);
			if (entry & PM_PRESENT)
				frames[n++] = (unsigned long)(entry & PM_PFN_MASK) * PAGE;
		}
	}
	close(fd);
	qsort(frames, n, sizeof(*frames), cmp_ulong);
	for (int i = 0; i < n; i++)
		if (!out || frames[out - 1] != frames[i])
			frames[out++] = frames[i];
	return out;
}

/* Read one byte per page: the accessed bit is set, the data is left as it was. */
static void read_pages(uintptr_t start, size_t len)
{
	for (uintptr_t a = start; a < start + len; a += PAGE)
		(void)*(volatile char *)a;
}

static void damon_abort(const char *what, int err)
{
	write_str(KDAMONDS "/0/state", "off");
	write_str(KDAMONDS "/1/state", "off");
	write_str(KDAMONDS "/nr_kdamonds", "0");
	fail("damon", what, err);
}

static void op_damon(char **f, int n)
{
	static unsigned long vstart[MAX_MAPS], vend[MAX_MAPS], pstart[MAX_MAPS * PA_PAGES], pend[MAX_MAPS * PA_PAGES];
	struct mapping *targets[MAX_MAPS];
	int ntargets = 0, nframes, err;
	long kd_va, kd_pa;
	const char *bad;
	uint64_t t0, t1, until;
	long ms;

	if (n < 3)
		fail("damon", "usage damon:MS:NAME[:NAME...]", 0);
	ms = strtol(f[1], NULL, 10);
	if (ms <= 0 || ms > 60000)
		fail("damon", "MS must be 1..60000", 0);
	for (int i = 2; i < n; i++) {
		targets[ntargets] = find("damon", f[i]);
		vstart[ntargets] = targets[ntargets]->start;
		vend[ntargets] = targets[ntargets]->start + targets[ntargets]->size;
		ntargets++;
	}
	qsort(vstart, ntargets, sizeof(*vstart), cmp_ulong);
	qsort(vend, ntargets, sizeof(*vend), cmp_ulong);
	nframes = second_half_frames(targets, ntargets, pstart);
	for (int i = 0; i < nframes; i++)
		pend[i] = pstart[i] + PAGE;
	if (read_file(KDAMONDS "/nr_kdamonds") < 0)
		fail("damon", "no DAMON sysfs interface (" KDAMONDS ")", errno);
	if (write_str(KDAMONDS "/nr_kdamonds", "2"))
		damon_abort("write " KDAMONDS "/nr_kdamonds", errno);
	if ((bad = kd_setup(0, "vaddr", vstart, vend, ntargets)) || (bad = kd_setup(1, "paddr", pstart, pend, nframes)))
		damon_abort(bad, errno);
	t0 = now_ns();
	if (write_str(KDAMONDS "/0/state", "on") || write_str(KDAMONDS "/1/state", "on"))
		damon_abort("turning the kdamonds on", errno);
	kd_va = read_long(KDAMONDS "/0/pid");
	kd_pa = read_long(KDAMONDS "/1/pid");
	until = now_ns() + (uint64_t)ms * 1000000ULL;
	while (now_ns() < until) {
		/* Accessed bits only: every page is present, so no fault and no callback. */
		for (int i = 0; i < ntargets; i++)
			read_pages(targets[i]->start, targets[i]->size / 2);
		usleep(20000);
	}
	err = write_str(KDAMONDS "/0/state", "off") || write_str(KDAMONDS "/1/state", "off") ? errno : 0;
	t1 = now_ns();
	write_str(KDAMONDS "/nr_kdamonds", "0");
	if (err)
		fail("damon", "turning the kdamonds off", err);
	if (kd_va <= 0 || kd_pa <= 0)
		fail("damon", "a kdamond did not start (" KDAMONDS "/N/pid)", 0);
	printf("{\"op\": \"damon\", \"kdamond_pid\": %ld, \"kdamond_pa_pid\": %ld, \"regions\": %d, \"frames\": %d, "
	       "\"sample_us\": %s, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", kd_va, kd_pa, ntargets, nframes,
	       SAMPLE_US, t0, t1);
}

static int damon_op(char **f, int n)
{
	if (strcmp(f[0], "damon"))
		return 0;
	op_damon(f, n);
	return 1;
}

MMOPS_FAMILY(damon) = { .op = damon_op };
