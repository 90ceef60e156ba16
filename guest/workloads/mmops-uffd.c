// SPDX-License-Identifier: GPL-2.0
/*
 * mmops operations of Linux 6.7 and later: PAGEMAP_SCAN's write-protection (fs/proc/task_mmu.c
 * do_pagemap_scan) and userfaultfd's UFFDIO_MOVE (mm/userfaultfd.c move_pages).  The uapi of both
 * is spelled out below: the host's headers may predate them.
 *
 *   pmscan:NAME:OFF:LEN      ioctl(PAGEMAP_SCAN) on /proc/self/pagemap with PM_SCAN_WP_MATCHING over
 *                            [OFF, OFF+LEN) of NAME (LEN may reach past the mapping), no userfaultfd:
 *                            no VMA allows write-protection, so nothing matches; prints ret and walk_end
 *   uffd-wpscan:NAME:STRIDE  over the whole mapping NAME (present pages): a userfaultfd with
 *                            WP_ASYNC registered in WP mode; a PAGEMAP_SCAN write-protecting every
 *                            written page (no output vector); a write to every STRIDE-th page (async
 *                            mode: the fault just drops the protection); a second scan with a vector of
 *                            1024 regions reporting and write-protecting the written pages; UFFDIO_UNREGISTER;
 *                            close.  Prints both scans' results (scan1, regions), walk_end, written
 *   uffd-move:SRC:OFF:LEN:DST:VAL
 *                            fill [OFF, OFF+LEN) of SRC with VAL, mmap DST (LEN bytes, untouched, at the
 *                            next 1 GiB-spaced address), register it with a userfaultfd (MOVE feature,
 *                            MISSING mode), UFFDIO_MOVE the range there, close.  Prints dst, dst_end, moved
 *                            (bytes), src_present (source pages still present, from /proc/self/pagemap),
 *                            dst_bad (destination pages not holding VAL), AnonHugePages of SRC and DST
 *
 * t0..t1 brackets the ioctls (for uffd-wpscan: from the first scan to the unregistration).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "mmops.h"

/* include/uapi/linux/fs.h of 6.7+ */
struct nh_page_region {
	uint64_t start, end, categories;
};
struct nh_pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define NH_PAGEMAP_SCAN		_IOWR('f', 16, struct nh_pm_scan_arg)
#define NH_PAGE_IS_WRITTEN	(1 << 1)
#define NH_PM_SCAN_WP_MATCHING	(1 << 0)

/* include/uapi/linux/userfaultfd.h of 6.8+ */
#define NH_UFFD_FEATURE_WP_UNPOPULATED	(1 << 13)
#define NH_UFFD_FEATURE_WP_ASYNC	(1 << 15)
#define NH_UFFD_FEATURE_MOVE		(1 << 16)
struct nh_uffdio_move {
	uint64_t dst, src, len, mode;
	int64_t move;
};
#define NH_UFFDIO_MOVE		_IOWR(UFFDIO, 0x05, struct nh_uffdio_move)

#define SCAN_VEC	1024
static struct nh_page_region vec[SCAN_VEC];	/* static: no malloc between operations */

static long pagemap_scan(const char *op, uintptr_t start, uintptr_t end, uint64_t nvec, uint64_t *walk_end)
{
	struct nh_pm_scan_arg arg = {
		.size = sizeof(arg), .flags = NH_PM_SCAN_WP_MATCHING, .start = start, .end = end,
		.vec = nvec ? (uintptr_t)vec : 0, .vec_len = nvec,
		.category_mask = NH_PAGE_IS_WRITTEN, .return_mask = NH_PAGE_IS_WRITTEN,
	};
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	long ret;

	if (fd < 0)
		fail(op, "open /proc/self/pagemap", errno);
	ret = ioctl(fd, NH_PAGEMAP_SCAN, &arg);
	if (ret < 0)
		fail(op, "ioctl(PAGEMAP_SCAN)", errno);
	close(fd);
	*walk_end = arg.walk_end;
	return ret;
}

static void op_pmscan(char **f, int n)
{
	struct mapping *m;
	uintptr_t start;
	size_t len;
	uint64_t t0, t1, walk_end;
	long ret;

	m = range_of(f, n, &start, &len);
	t0 = now_ns();
	ret = pagemap_scan("pmscan", start, start + len, 0, &walk_end);
	t1 = now_ns();
	printf("{\"op\": \"pmscan\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"ret\": %ld, \"walk_end\": %" PRIu64
	       ", \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)start,
	       (unsigned long)(start + len), ret, walk_end, t0, t1);
}

/* A userfaultfd with `features`; exits on failure. */
static int uffd_open(const char *op, uint64_t features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (fd < 0)
		fail(op, "userfaultfd", errno);
	if (ioctl(fd, UFFDIO_API, &api))
		fail(op, "UFFDIO_API (the kernel lacks a feature asked for?)", errno);
	return fd;
}

static void uffd_register(const char *op, int fd, uintptr_t start, size_t len, uint64_t mode)
{
	struct uffdio_register reg = { .range = { .start = start, .len = len }, .mode = mode };

	if (ioctl(fd, UFFDIO_REGISTER, &reg))
		fail(op, "UFFDIO_REGISTER", errno);
}

static void op_uffd_wpscan(char **f, int n)
{
	struct mapping *m;
	struct uffdio_range range;
	uint64_t t0, t1, walk_end;
	long stride, scan1, regions, written = 0;
	int fd;

	if (n < 3)
		fail("uffd-wpscan", "usage uffd-wpscan:NAME:STRIDE", 0);
	m = find("uffd-wpscan", f[1]);
	stride = strtol(f[2], NULL, 0);
	if (stride < 1)
		fail("uffd-wpscan", "STRIDE must be at least 1", 0);
	fd = uffd_open("uffd-wpscan", NH_UFFD_FEATURE_WP_ASYNC | NH_UFFD_FEATURE_WP_UNPOPULATED);
	uffd_register("uffd-wpscan", fd, m->start, m->size, UFFDIO_REGISTER_MODE_WP);
	t0 = now_ns();
	scan1 = pagemap_scan("uffd-wpscan", m->start, m->start + m->size, 0, &walk_end);
	for (uintptr_t a = m->start; a < m->start + m->size; a += stride * PAGE, written++)
		*(volatile char *)a = *(volatile char *)a;	/* a write that keeps the data */
	regions = pagemap_scan("uffd-wpscan", m->start, m->start + m->size, SCAN_VEC, &walk_end);
	range.start = m->start;
	range.len = m->size;
	if (ioctl(fd, UFFDIO_UNREGISTER, &range))
		fail("uffd-wpscan", "UFFDIO_UNREGISTER", errno);
	t1 = now_ns();
	close(fd);
	printf("{\"op\": \"uffd-wpscan\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"stride\": %ld, "
	       "\"written\": %ld, \"scan1\": %ld, \"regions\": %ld, \"walk_end\": %" PRIu64 ", \"t0\": %" PRIu64
	       ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)m->start, (unsigned long)(m->start + m->size),
	       stride, written, scan1, regions, walk_end, t0, t1);
}

/* Pages of [start, start+len) present in /proc/self/pagemap. */
static long present_pages(const char *op, uintptr_t start, size_t len)
{
	static uint64_t entries[512];	/* static: no malloc between operations */
	long present = 0;

	for (size_t done = 0, pages = len / PAGE; done < pages; ) {
		size_t chunk = pages - done < 512 ? pages - done : 512;

		read_pagemap(op, start + done * PAGE, chunk, entries);
		for (size_t i = 0; i < chunk; i++)
			present += !!(entries[i] & PM_PRESENT);
		done += chunk;
	}
	return present;
}

static void op_uffd_move(char **f, int n)
{
	struct mapping *src, *dst;
	struct nh_uffdio_move mv;
	uintptr_t from;
	size_t len;
	uint64_t t0, t1;
	long dst_bad = 0;
	int fd, val, err = 0;
	void *p;

	if (n < 6)
		fail("uffd-move", "usage uffd-move:SRC:OFF:LEN:DST:VAL", 0);
	src = find("uffd-move", f[1]);
	from = src->start + parse_size("uffd-move", f[2]);
	len = parse_size("uffd-move", f[3]);
	val = strtol(f[5], NULL, 0);
	if (val < 1 || val > 255 || !len || len % PAGE || from + len > src->start + src->size)
		fail("uffd-move", "VAL must be 1..255 and [OFF, OFF+LEN) whole pages of SRC", 0);
	fill_pages(src, from, len, val);
	dst = new_mapping("uffd-move", f[4], len);
	p = mmap((void *)dst->start, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
		 -1, 0);
	if (p == MAP_FAILED || (uintptr_t)p != dst->start)
		fail("uffd-move", "mmap", errno);
	nmaps++;
	fd = uffd_open("uffd-move", NH_UFFD_FEATURE_MOVE);
	uffd_register("uffd-move", fd, dst->start, len, UFFDIO_REGISTER_MODE_MISSING);
	mv = (struct nh_uffdio_move){ .dst = dst->start, .src = from, .len = len, .mode = 0 };
	t0 = now_ns();
	if (ioctl(fd, NH_UFFDIO_MOVE, &mv))
		err = errno;
	t1 = now_ns();
	close(fd);
	/* The pages went with their data: the destination's shadow is the source's. */
	memcpy(dst->shadow, src->shadow + (from - src->start) / PAGE, len / PAGE);
	for (size_t i = 0; !err && i < len / PAGE; i++)
		dst_bad += !page_is(dst->start + i * PAGE, val, val);
	printf("{\"op\": \"uffd-move\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"dst\": %lu, \"dst_end\": %lu, "
	       "\"errno\": %d, \"moved\": %lld, \"src_present\": %ld, \"dst_bad\": %ld, \"anon_huge_kb\": %ld, "
	       "\"dst_huge_kb\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", src->name, (unsigned long)from,
	       (unsigned long)(from + len), (unsigned long)dst->start, (unsigned long)(dst->start + len), err,
	       (long long)mv.move, present_pages("uffd-move", from, len), dst_bad, anon_huge_kb(src->start, src->start + src->size),
	       anon_huge_kb(dst->start, dst->start + len), t0, t1);
}

static const struct mmops_op uffd_ops[] = {
	{ "pmscan", op_pmscan }, { "uffd-wpscan", op_uffd_wpscan }, { "uffd-move", op_uffd_move }, { NULL, NULL },
};

MMOPS_FAMILY(uffd) = { .ops = uffd_ops };
