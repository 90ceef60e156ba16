// SPDX-License-Identifier: GPL-2.0
/*
 * mmops: perform a named script of memory operations on anonymous memory and
 * print each as one JSON line with exact addresses, sizes and CLOCK_MONOTONIC
 * times (the clock of the probe's records), so the model can tell which
 * callbacks each operation caused.
 *
 *   mmops [--no-probe] OP...
 *
 *   cpu:N                        pin the workload to CPU N (sched_setaffinity): MADV_COLD drains only its
 *                                own CPU's LRU batches and skips pages still in another CPU's
 *   map:NAME:SIZE[:thp|:nothp]   mmap RW anonymous at a fixed 1 GiB-spaced address, 2 MiB aligned,
 *                                MADV_HUGEPAGE or MADV_NOHUGEPAGE, touched; thp is checked in smaps
 *   touch:NAME:OFF:LEN           write one byte per page
 *   dontneed:NAME:OFF:LEN        madvise(MADV_DONTNEED)
 *   mprotect:NAME:OFF:LEN:PROT   PROT is r, rw or none
 *   munmap:NAME:OFF:LEN
 *   split:NAME:OFF:LEN           write pid,0xstart,0xend to /sys/kernel/debug/split_huge_pages
 *   cow:NAME:OFF                 fork; the parent writes the page at OFF while the child keeps it shared
 *   loop:N                       N x (mmap 64 KiB, touch it, munmap): the probe-overhead loop
 *   fill:NAME:VAL                write byte VAL over the whole mapping (remembered per page)
 *   write:NAME:OFF:VAL           write byte VAL over the page at OFF
 *   verify:NAME                  compare every byte with what was written; reports bad_pages
 *   ksm:NAME:TIMEOUT             MADV_MERGEABLE, run ksmd fast until full_scans advanced by 2,
 *                                report ksm_merging_pages and ksmd's counters, stop ksmd
 *   ksmd:PID:TIMEOUT             the same ksmd run for another process's mergeable memory; reports
 *                                /proc/PID/ksm_merging_pages
 *   unmerge:NAME                 MADV_UNMERGEABLE
 *   oom:SIZE                     print the VMAs (from smaps), then mmap SIZE and touch it: expects
 *                                to be killed by the OOM killer; surviving is an error
 *   cold:NAME:OFF:LEN            madvise(MADV_COLD): PTEs made old and PG_referenced cleared, no callback;
 *                                only pages on an LRU list (pin the workload first: cpu:N)
 *   khugepaged:NAME:TIMEOUT      MADV_HUGEPAGE, khugepaged scanning fast until full_scans advanced by 2,
 *                                then MADV_NOHUGEPAGE and khugepaged's settings restored; reports
 *                                khugepaged's pid, collapse counters from /proc/vmstat and AnonHugePages
 *   reclaim:NAME                 print the VMAs, write the mapping's size to the workload's own memcg's
 *                                memory.reclaim (EAGAIN is reported, not an error); reports
 *                                lru_gen/enabled and the mapping's Swap from smaps
 *
 * SIZE, OFF and LEN take K and M suffixes.  Before the first operation mmops
 * waits until the probe is attached to it (/sys/module/nh_probe/parameters/
 * attached_pid), unless --no-probe.  It ends with an "exit" line and exit(0);
 * an operation that fails prints {"op": ..., "error": ...} and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mmops.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct mapping maps[MAX_MAPS];
int nmaps;
char scratch[1 << 18];	/* static: reading /proc must not malloc (heap changes are mm events) */

extern char __bss_start[], _end[];

/*
 * mmops's zero-initialised data (every family's static buffers too: operations must not malloc),
 * faulted in writable before main.  A page of .bss that is first read maps the shared zero page,
 * and the first write to it then copies it (do_wp_page -> wp_page_copy: a 4 KiB CLEAR window);
 * which variables share a page depends on the link, so such a COW could fall inside any
 * operation's window, e.g. map's first read of nmaps followed by its write to maps[].
 * MADV_POPULATE_WRITE (5.14+) faults every page in writable at once.  Touching each page from
 * user space would not do: a read-modify-write of a missing page can fault as a read first under
 * TCG, which maps the zero page again.  A kernel without it leaves the pages to their first access.
 */
static void __attribute__((constructor)) prefault_bss(void)
{
	uintptr_t start = (uintptr_t)__bss_start & ~(PAGE - 1);
	uintptr_t end = ((uintptr_t)_end + PAGE - 1) & ~(PAGE - 1);

	madvise((void *)start, end - start, MADV_POPULATE_WRITE);
}

uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

void fail(const char *op, const char *what, int err)
{
	printf("{\"op\": \"%s\", \"error\": \"%s%s%s\"}\n", op, what, err ? ": " : "", err ? strerror(err) : "");
	exit(1);
}

size_t parse_size(const char *op, const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 0);

	if (end == s)
		fail(op, "bad size", 0);
	if (*end == 'K' || *end == 'k')
		v <<= 10;
	else if (*end == 'M' || *end == 'm')
		v <<= 20;
	else if (*end)
		fail(op, "bad size suffix", 0);
	return v;
}

/* A size that must be a multiple of `align`; `what` says so when it is not. */
size_t parse_aligned(const char *op, const char *s, size_t align, const char *what)
{
	size_t v = parse_size(op, s);

	if (v % align)
		fail(op, what, 0);
	return v;
}

struct mapping *find(const char *op, const char *name)
{
	for (int i = 0; i < nmaps; i++)
		if (!strcmp(maps[i].name, name))
			return &maps[i];
	fail(op, "no such mapping", 0);
	return NULL;
}

struct mapping *range_of(char **f, int n, uintptr_t *start, size_t *len)
{
	struct mapping *m;

	if (n < 4)
		fail(f[0], "usage OP:NAME:OFF:LEN", 0);
	m = find(f[0], f[1]);
	*start = m->start + parse_size(f[0], f[2]);
	*len = parse_size(f[0], f[3]);
	return m;
}

struct mapping *new_mapping(const char *op, const char *name, size_t size)
{
	struct mapping *m;

	if (nmaps == MAX_MAPS)
		fail(op, "too many mappings", 0);
	m = &maps[nmaps];
	snprintf(m->name, sizeof(m->name), "%s", name);
	m->size = size;
	m->start = REGION_BASE + (uintptr_t)nmaps * REGION_STEP;
	m->shadow = calloc(size / PAGE ? size / PAGE : 1, 1);
	if (!m->shadow)
		fail(op, "calloc", errno);
	return m;
}

ssize_t read_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n, total = 0;

	if (fd < 0)
		return -1;
	while (total < (ssize_t)sizeof(scratch) - 1 && (n = read(fd, scratch + total, sizeof(scratch) - 1 - total)) > 0)
		total += n;
	close(fd);
	scratch[total] = 0;
	return total;
}

char *next_line(const char *p)
{
	const char *nl = strchr(p, '\n');

	return nl ? (char *)nl + 1 : NULL;
}

/* A smaps field (kB, e.g. "AnonHugePages:") summed over the VMAs inside [start, end), or -1. */
long smaps_kb(const char *field, uintptr_t start, uintptr_t end)
{
	size_t len = strlen(field);
	long total = 0;
	int inside = 0;

	if (read_file("/proc/self/smaps") < 0)
		return -1;
	for (char *p = scratch; p && *p; p = next_line(p)) {
		unsigned long s, e;

		if (sscanf(p, "%lx-%lx ", &s, &e) == 2)	/* a VMA's header line */
			inside = s >= start && e <= end;
		else if (inside && !strncmp(p, field, len))
			total += strtol(p + len, NULL, 10);
	}
	return total;
}

long anon_huge_kb(uintptr_t start, uintptr_t end)
{
	return smaps_kb("AnonHugePages:", start, end);
}

/* Print the private VMAs (which fork may write-protect) as a JSON array. */
void print_private_vmas(void)
{
	char *p;
	int first = 1;

	if (read_file("/proc/self/maps") < 0)
		return;
	printf("[");
	for (p = scratch; *p; ) {
		unsigned long s, e;
		char perms[5];
		char *nl = strchr(p, '\n');

		if (sscanf(p, "%lx-%lx %4s", &s, &e, perms) == 3 && perms[3] == 'p') {
			printf("%s[%lu, %lu]", first ? "" : ", ", s, e);
			first = 0;
		}
		if (!nl)
			break;
		p = nl + 1;
	}
	printf("]");
}

/* The pagemap entries of PAGES pages from START into OUT. */
void read_pagemap(const char *op, uintptr_t start, size_t pages, uint64_t *out)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	ssize_t want = pages * sizeof(uint64_t);

	if (fd < 0)
		fail(op, "open /proc/self/pagemap", errno);
	if (pread(fd, out, want, start / PAGE * sizeof(uint64_t)) != want)
		fail(op, "read /proc/self/pagemap", errno);
	close(fd);
}

void touch(uintptr_t start, size_t len)
{
	for (uintptr_t a = start; a < start + len; a += PAGE)
		*(volatile char *)a = 1;
}

void fill_pages(struct mapping *m, uintptr_t start, size_t len, int val)
{
	memset((void *)start, val, len);
	memset(m->shadow + (start - m->start) / PAGE, val, len / PAGE);
}

int page_is(uintptr_t addr, int first, int rest)
{
	const unsigned char *p = (const unsigned char *)addr;

	if (p[0] != first)
		return 0;
	for (size_t j = 1; j < PAGE; j++)
		if (p[j] != rest)
			return 0;
	return 1;
}

int page_holds(uintptr_t addr, int val)
{
	return val ? page_is(addr, val, val) : page_is(addr, 1, 0);
}

/* Pages whose bytes differ from the shadow.  Assumes the whole mapping is still mapped and
 * nothing was discarded. */
long bad_pages(struct mapping *m)
{
	long bad = 0;

	for (size_t i = 0; i < m->size / PAGE; i++)
		bad += !page_holds(m->start + i * PAGE, m->shadow[i]);
	return bad;
}

static void wait_for_probe(void)
{
	uint64_t deadline = now_ns() + 10000000000ULL;
	pid_t me = getpid();

	while (now_ns() < deadline) {
		if (read_file("/sys/module/nh_probe/parameters/attached_pid") > 0 && atoi(scratch) == me)
			return;
		usleep(1000);
	}
	fail("wait", "the probe did not attach within 10 s", 0);
}

int prot_of(const char *op, const char *s)
{
	if (!strcmp(s, "r"))
		return PROT_READ;
	if (!strcmp(s, "rw"))
		return PROT_READ | PROT_WRITE;
	if (!strcmp(s, "none"))
		return PROT_NONE;
	fail(op, "PROT must be r, rw or none", 0);
	return 0;
}

static void op_map(char **f, int n)
{
	struct mapping *m;
	int thp = n > 3 && !strcmp(f[3], "thp");
	uint64_t t0, t1;
	void *p;
	long huge;

	if (n < 3)
		fail("map", "usage map:NAME:SIZE[:thp|:nothp]", 0);
	m = new_mapping("map", f[1], parse_size("map", f[2]));	/* the shadow's 0 per page: touched only */
	t0 = now_ns();
	p = mmap((void *)m->start, m->size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p == MAP_FAILED || (uintptr_t)p != m->start)
		fail("map", "mmap", errno);
	if (madvise(p, m->size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE))
		fail("map", "madvise", errno);
	touch(m->start, m->size);
	t1 = now_ns();
	nmaps++;
	huge = anon_huge_kb(m->start, m->start + m->size);
	printf("{\"op\": \"map\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"thp\": %s, \"anon_huge_kb\": %ld, "
	       "\"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)m->start,
	       (unsigned long)(m->start + m->size), thp ? "true" : "false", huge, t0, t1);
	if (thp && (huge < 0 || (size_t)huge * 1024 != (m->size & ~(HPAGE - 1))))
		fail("map", "the mapping is not THP-backed (see anon_huge_kb)", 0);
}

/* dontneed, mprotect, munmap, touch, split, cold: NAME:OFF:LEN on one mapping. */
static void op_range(char **f, int n)
{
	const char *op = f[0];
	struct mapping *m;
	uintptr_t start;
	size_t len;
	uint64_t t0, t1;
	int ret = 0;

	m = range_of(f, n, &start, &len);
	t0 = now_ns();
	if (!strcmp(op, "dontneed")) {
		ret = madvise((void *)start, len, MADV_DONTNEED);
	} else if (!strcmp(op, "mprotect")) {
		ret = mprotect((void *)start, len, prot_of(op, n > 4 ? f[4] : ""));
	} else if (!strcmp(op, "munmap")) {
		ret = munmap((void *)start, len);
	} else if (!strcmp(op, "touch")) {
		touch(start, len);
	} else if (!strcmp(op, "cold")) {
		ret = madvise((void *)start, len, MADV_COLD);
	} else if (!strcmp(op, "split")) {
		char cmd[96];
		int fd = open("/sys/kernel/debug/split_huge_pages", O_WRONLY | O_CLOEXEC);
		int len_cmd = snprintf(cmd, sizeof(cmd), "%d,0x%lx,0x%lx", getpid(), (unsigned long)start,
				       (unsigned long)(start + len));

		if (fd < 0)
			fail(op, "open /sys/kernel/debug/split_huge_pages", errno);
		ret = write(fd, cmd, len_cmd) == len_cmd ? 0 : -1;
		close(fd);
	}
	t1 = now_ns();
	if (ret)
		fail(op, op, errno);
	printf("{\"op\": \"%s\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"prot\": \"%s\", "
	       "\"anon_huge_kb\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", op, m->name,
	       (unsigned long)start, (unsigned long)(start + len), !strcmp(op, "mprotect") ? f[4] : "",
	       anon_huge_kb(m->start, m->start + m->size), t0, t1);
}

static void op_cow(char **f, int n)
{
	struct mapping *m;
	uintptr_t addr;
	uint64_t t0, t_fork, t_write, t1;
	int pipefd[2];
	char c = 0;
	pid_t child;

	if (n < 3)
		fail("cow", "usage cow:NAME:OFF", 0);
	m = find("cow", f[1]);
	addr = m->start + parse_size("cow", f[2]);
	if (addr >= m->start + m->size)
		fail("cow", "OFF inside the mapping", 0);
	if (pipe(pipefd))
		fail("cow", "pipe", errno);
	printf("{\"op\": \"cow-vmas\", \"private_vmas\": ");
	print_private_vmas();
	printf("}\n");
	fflush(stdout);
	t0 = now_ns();
	child = fork();
	if (child < 0)
		fail("cow", "fork", errno);
	if (child == 0) {
		/* Keep the page shared until the parent has written it. */
		if (read(pipefd[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	t_fork = now_ns();
	*(volatile char *)addr = 2;
	t_write = now_ns();
	if (write(pipefd[1], &c, 1) != 1 || waitpid(child, NULL, 0) != child)
		fail("cow", "child", errno);
	t1 = now_ns();
	close(pipefd[0]);
	close(pipefd[1]);
	printf("{\"op\": \"cow\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"child\": %d, \"t0\": %" PRIu64
	       ", \"t_fork\": %" PRIu64 ", \"t_write\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name,
	       (unsigned long)addr, (unsigned long)(addr + PAGE), child, t0, t_fork, t_write, t1);
}

static void op_loop(char **f, int n)
{
	long count = n > 1 ? strtol(f[1], NULL, 0) : 0;
	uint64_t t0 = now_ns(), t1;

	for (long i = 0; i < count; i++) {
		void *p = mmap(NULL, 64 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			fail("loop", "mmap", errno);
		touch((uintptr_t)p, 64 << 10);
		if (munmap(p, 64 << 10))
			fail("loop", "munmap", errno);
	}
	t1 = now_ns();
	printf("{\"op\": \"loop\", \"count\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", count, t0, t1);
}

long read_long(const char *path)
{
	return read_file(path) > 0 ? strtol(scratch, NULL, 10) : -1;
}

int write_str(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	int ok;

	if (fd < 0)
		return -1;
	ok = write(fd, value, strlen(value)) == (ssize_t)strlen(value);
	close(fd);
	return ok ? 0 : -1;
}

int find_kthread(const char *comm)
{
	char path[64];
	int found = 0;

	for (int pid = 2; pid < 4096 && !found; pid++) {
		snprintf(path, sizeof(path), "/proc/%d/comm", pid);
		if (read_file(path) > 0 && !strncmp(scratch, comm, strlen(comm)) && scratch[strlen(comm)] == '\n')
			found = pid;
	}
	return found;
}

static void op_data(char **f, int n)
{
	const char *op = f[0];
	struct mapping *m;
	uint64_t t0, t1;
	uintptr_t start;
	size_t len;
	int val = 0;

	if (n < 2)
		fail(op, "usage fill:NAME:VAL | write:NAME:OFF:VAL | verify:NAME", 0);
	m = find(op, f[1]);
	start = m->start;
	len = m->size;
	if (!strcmp(op, "write")) {
		if (n < 4)
			fail(op, "usage write:NAME:OFF:VAL", 0);
		start += parse_size(op, f[2]) & ~(PAGE - 1);
		len = PAGE;
		val = strtol(f[3], NULL, 0);
	} else if (!strcmp(op, "fill")) {
		if (n < 3)
			fail(op, "usage fill:NAME:VAL", 0);
		val = strtol(f[2], NULL, 0);
	}
	if (strcmp(op, "verify") && (val < 1 || val > 255))
		fail(op, "VAL must be 1..255 (0 stands for a touched-only page)", 0);
	t0 = now_ns();
	if (strcmp(op, "verify"))
		fill_pages(m, start, len, val);
	t1 = now_ns();
	printf("{\"op\": \"%s\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"value\": %d, \"bad_pages\": %ld, "
	       "\"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", op, m->name, (unsigned long)start,
	       (unsigned long)(start + len), val, strcmp(op, "verify") ? 0 : bad_pages(m), t0, t1);
}

#define KSM "/sys/kernel/mm/ksm/"

/* Poll a kernel thread's full_scans until it is two past `before` or the timeout: a whole pass
 * that began after the caller's change (the first one may have begun before it). */
static long wait_two_scans(const char *path, long before, long timeout_s)
{
	uint64_t deadline = now_ns() + (uint64_t)timeout_s * 1000000000ULL;
	long scans;

	while ((scans = read_long(path)) < before + 2 && now_ns() < deadline)
		usleep(5000);
	return scans;
}

/* A path of its own: read_long() reads into scratch. */
static const char *merging_path(int pid)
{
	static char path[64];

	snprintf(path, sizeof(path), "/proc/%d/ksm_merging_pages", pid);
	return path;
}

/* Run ksmd fast until full_scans has advanced by 2 (or the timeout), then stop it; full_scans. */
static long run_ksmd(const char *op, long timeout_s, long *scans0)
{
	long scans;

	*scans0 = read_long(KSM "full_scans");
	if (write_str(KSM "pages_to_scan", "5000") || write_str(KSM "sleep_millisecs", "10") ||
	    write_str(KSM "run", "1"))
		fail(op, "starting ksmd through " KSM, errno);
	scans = wait_two_scans(KSM "full_scans", *scans0, timeout_s);
	write_str(KSM "run", "0");
	return scans;
}

static void op_ksm(char **f, int n)
{
	struct mapping *m;
	uint64_t t0, t1;
	long scans0, scans, merging, shared, sharing, timeout_s = n > 2 ? strtol(f[2], NULL, 0) : 30;
	int ksmd;

	if (n < 2)
		fail("ksm", "usage ksm:NAME[:TIMEOUT_S]", 0);
	m = find("ksm", f[1]);
	ksmd = find_kthread("ksmd");
	t0 = now_ns();
	if (madvise((void *)m->start, m->size, MADV_MERGEABLE))
		fail("ksm", "madvise(MADV_MERGEABLE)", errno);
	scans = run_ksmd("ksm", timeout_s, &scans0);
	t1 = now_ns();
	merging = read_long(merging_path(getpid()));
	shared = read_long(KSM "pages_shared");
	sharing = read_long(KSM "pages_sharing");
	printf("{\"op\": \"ksm\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"ksmd_pid\": %d, "
	       "\"full_scans\": %ld, \"full_scans_before\": %ld, \"merging_pages\": %ld, \"pages_shared\": %ld, "
	       "\"pages_sharing\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name,
	       (unsigned long)m->start, (unsigned long)(m->start + m->size), ksmd, scans, scans0,
	       merging, shared, sharing, t0, t1);
	if (scans < scans0 + 2)
		fail("ksm", "ksmd did not complete two full scans in time (see full_scans)", 0);
}

/* ksmd:PID:TIMEOUT: the same ksmd run for another process's MADV_MERGEABLE memory (a VMM's slot). */
static void op_ksmd(char **f, int n)
{
	long scans0, scans, merging, timeout_s = n > 2 ? strtol(f[2], NULL, 0) : 30;
	uint64_t t0, t1;
	int pid;

	if (n < 2)
		fail("ksmd", "usage ksmd:PID[:TIMEOUT_S]", 0);
	pid = atoi(f[1]);
	t0 = now_ns();
	scans = run_ksmd("ksmd", timeout_s, &scans0);
	t1 = now_ns();
	merging = read_long(merging_path(pid));
	printf("{\"op\": \"ksmd\", \"pid\": %d, \"full_scans\": %ld, \"full_scans_before\": %ld, "
	       "\"merging_pages\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", pid, scans, scans0, merging,
	       t0, t1);
	if (scans < scans0 + 2)
		fail("ksmd", "ksmd did not complete two full scans in time (see full_scans)", 0);
}

static void op_cpu(char **f, int n)
{
	cpu_set_t set;
	uint64_t t0;
	long cpu;

	if (n < 2)
		fail("cpu", "usage cpu:N", 0);
	cpu = strtol(f[1], NULL, 10);
	if (cpu < 0 || cpu >= CPU_SETSIZE)
		fail("cpu", "no such CPU", EINVAL);
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	t0 = now_ns();
	if (sched_setaffinity(0, sizeof(set), &set))
		fail("cpu", "sched_setaffinity", errno);
	/* sched_setaffinity migrates the caller before it returns; say so if it did not. */
	if (sched_getcpu() != cpu)
		fail("cpu", "still running on another CPU after sched_setaffinity", 0);
	printf("{\"op\": \"cpu\", \"cpu\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", cpu, t0, now_ns());
}

static void op_unmerge(char **f, int n)
{
	struct mapping *m;
	uint64_t t0, t1;

	if (n < 2)
		fail("unmerge", "usage unmerge:NAME", 0);
	m = find("unmerge", f[1]);
	t0 = now_ns();
	if (madvise((void *)m->start, m->size, MADV_UNMERGEABLE))
		fail("unmerge", "madvise(MADV_UNMERGEABLE)", errno);
	t1 = now_ns();
	printf("{\"op\": \"unmerge\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"merging_pages\": %ld, "
	       "\"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)m->start,
	       (unsigned long)(m->start + m->size), read_long(merging_path(getpid())), t0, t1);
}

/* Every VMA with the smaps flags the OOM reaper decides by (sh, pf, ht). */
static void print_vmas_with_flags(const char *op, uintptr_t extra_start, size_t extra_len)
{
	int first = 1;
	unsigned long s = 0, e = 0;

	if (read_file("/proc/self/smaps") < 0)
		fail(op, "read /proc/self/smaps", errno);
	printf("{\"op\": \"vmas\", \"vmas\": [");
	for (char *p = scratch; p && *p; p = next_line(p)) {
		char perms[5];

		if (sscanf(p, "%lx-%lx %4s", &s, &e, perms) == 3) {
			printf("%s{\"start\": %lu, \"end\": %lu, \"perms\": \"%s\"", first ? "" : ", ", s, e, perms);
			first = 0;
		} else if (!strncmp(p, "VmFlags:", 8)) {
			char *nl = strchr(p, '\n');

			printf(", \"flags\": \"%.*s\"}", nl ? (int)(nl - p - 9) : (int)strlen(p + 9), p + 9);
		}
	}
	/* The allocation about to be made, as its own VMA. */
	if (extra_len)
		printf("%s{\"start\": %lu, \"end\": %lu, \"perms\": \"rw-p\", \"flags\": \"rd wr mr mw me ac\"}",
		       first ? "" : ", ", (unsigned long)extra_start, (unsigned long)(extra_start + extra_len));
	printf("]}\n");
	fflush(stdout);
}

static void op_oom(char **f, int n)
{
	size_t size;
	uintptr_t at = REGION_BASE + (uintptr_t)nmaps * REGION_STEP;
	uint64_t t0;

	if (n < 2)
		fail("oom", "usage oom:SIZE", 0);
	size = parse_size("oom", f[1]);
	print_vmas_with_flags("oom", at, size);
	t0 = now_ns();
	printf("{\"op\": \"oom\", \"start\": %lu, \"end\": %lu, \"reaper_pid\": %d, \"t0\": %" PRIu64 "}\n",
	       (unsigned long)at, (unsigned long)(at + size), find_kthread("oom_reaper"), t0);
	fflush(stdout);
	if (mmap((void *)at, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0) !=
	    (void *)at)
		fail("oom", "mmap", errno);
	madvise((void *)at, size, MADV_NOHUGEPAGE);
	touch(at, size);
	fail("oom", "survived: the whole allocation fit under the limit", 0);
}

#define THP "/sys/kernel/mm/transparent_hugepage/khugepaged/"

/* A counter from /proc/vmstat, or -1. */
static long vmstat(const char *name)
{
	size_t len = strlen(name);

	if (read_file("/proc/vmstat") < 0)
		return -1;
	for (char *p = scratch; p && *p; p = next_line(p))
		if (!strncmp(p, name, len) && p[len] == ' ')
			return strtol(p + len + 1, NULL, 10);
	return -1;
}

/* khugepaged's settings while the khugepaged op runs: a pass every 20 ms over 8 blocks. */
static const char *const khugepaged_fast[][2] = {
	{ "scan_sleep_millisecs", "20" }, { "alloc_sleep_millisecs", "20" }, { "pages_to_scan", "4096" },
};
#define N_KNOBS (sizeof(khugepaged_fast) / sizeof(khugepaged_fast[0]))

/* Write VALUE to khugepaged's knob NAME; with OLD, first keep what it held there. */
static int khugepaged_knob(const char *name, const char *value, char old[32])
{
	char path[128];

	snprintf(path, sizeof(path), THP "%s", name);
	if (old) {
		if (read_file(path) <= 0)
			return -1;
		snprintf(old, 32, "%.31s", scratch);
	}
	return write_str(path, value);
}

/*
 * khugepaged scans fast until two full passes have completed since
 * MADV_HUGEPAGE registered the mm (the first may have begun before), then
 * the mapping is made ineligible again so that later passes add nothing,
 * and khugepaged's settings are put back (also when a step fails).
 */
static void op_khugepaged(char **f, int n)
{
	char saved[N_KNOBS][32] = { { 0 } };
	struct mapping *m;
	uint64_t t0, t1;
	long scans0, scans, alloc0, failed0, timeout_s = n > 2 ? strtol(f[2], NULL, 0) : 30;
	const char *failed = NULL;
	int kthread, err = 0;

	if (n < 2)
		fail("khugepaged", "usage khugepaged:NAME[:TIMEOUT_S]", 0);
	m = find("khugepaged", f[1]);
	kthread = find_kthread("khugepaged");
	alloc0 = vmstat("thp_collapse_alloc");
	failed0 = vmstat("thp_collapse_alloc_failed");
	scans0 = read_long(THP "full_scans");
	t0 = now_ns();
	for (size_t i = 0; i < N_KNOBS && !failed; i++)
		if (khugepaged_knob(khugepaged_fast[i][0], khugepaged_fast[i][1], saved[i]))
			failed = "setting khugepaged's scan rate", err = errno;
	if (!failed && madvise((void *)m->start, m->size, MADV_HUGEPAGE))
		failed = "madvise(MADV_HUGEPAGE)", err = errno;
	scans = failed ? scans0 : wait_two_scans(THP "full_scans", scans0, timeout_s);
	if (!failed && madvise((void *)m->start, m->size, MADV_NOHUGEPAGE))
		failed = "madvise(MADV_NOHUGEPAGE)", err = errno;
	t1 = now_ns();
	for (size_t i = 0; i < N_KNOBS; i++)
		if (saved[i][0])
			khugepaged_knob(khugepaged_fast[i][0], saved[i], NULL);
	if (failed)
		fail("khugepaged", failed, err);
	printf("{\"op\": \"khugepaged\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"khugepaged_pid\": %d, "
	       "\"full_scans\": %ld, \"full_scans_before\": %ld, \"collapse_alloc\": %ld, \"collapse_alloc_failed\": %ld, "
	       "\"anon_huge_kb\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)m->start,
	       (unsigned long)(m->start + m->size), kthread, scans, scans0, vmstat("thp_collapse_alloc") - alloc0,
	       vmstat("thp_collapse_alloc_failed") - failed0, anon_huge_kb(m->start, m->start + m->size), t0, t1);
	if (scans < scans0 + 2)
		fail("khugepaged", "khugepaged did not complete two full scans in time (see full_scans)", 0);
}

int swap_active(void)
{
	char *nl;

	return read_file("/proc/swaps") >= 0 && (nl = strchr(scratch, '\n')) && nl[1];	/* a line below the header */
}

long lru_gen_enabled(void)
{
	return read_file("/sys/kernel/mm/lru_gen/enabled") > 0 ? strtol(scratch, NULL, 16) : -1;
}

void memcg_reclaim_path(const char *op, char *path, size_t size)
{
	if (read_file("/proc/self/cgroup") <= 0 || strncmp(scratch, "0::/", 4) || !scratch[4] || scratch[4] == '\n')
		fail(op, "the workload is not in a memcg of its own (/proc/self/cgroup)", 0);
	*strchrnul(scratch, '\n') = 0;
	snprintf(path, size, "/sys/fs/cgroup%.200s/memory.reclaim", scratch + 3);
}

int memcg_reclaim(const char *op, const char *path, size_t bytes, uint64_t *t0, uint64_t *t1)
{
	char size[32];
	int fd, err = 0;

	snprintf(size, sizeof(size), "%zu", bytes);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		fail(op, "open memory.reclaim", errno);
	*t0 = now_ns();
	if (write(fd, size, strlen(size)) != (ssize_t)strlen(size))
		err = errno;
	*t1 = now_ns();
	close(fd);
	if (err && err != EAGAIN)
		fail(op, "write memory.reclaim", err);
	return err;
}

/* Proactive reclaim of the workload's own memcg, from the workload's own task. */
static void op_reclaim(char **f, int n)
{
	struct mapping *m;
	char path[256];
	uint64_t t0, t1;
	long lru_gen;
	int err;

	if (n < 2)
		fail("reclaim", "usage reclaim:NAME", 0);
	m = find("reclaim", f[1]);
	if (!swap_active())
		fail("reclaim", "no swap is active: anonymous pages cannot be reclaimed", 0);
	memcg_reclaim_path("reclaim", path, sizeof(path));
	lru_gen = lru_gen_enabled();
	print_vmas_with_flags("reclaim", 0, 0);
	err = memcg_reclaim("reclaim", path, m->size, &t0, &t1);
	printf("{\"op\": \"reclaim\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"lru_gen\": %ld, \"errno\": %d, "
	       "\"swap_kb\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", m->name, (unsigned long)m->start,
	       (unsigned long)(m->start + m->size), lru_gen, err, smaps_kb("Swap:", m->start, m->start + m->size), t0, t1);
}

/*
 * Operation families in files of their own (mmops-*.c) register with MMOPS_FAMILY; the linker
 * collects them into one section, so adding a family touches no shared file.
 */
extern const struct mmops_family __start_mmops_families[] __attribute__((weak));
extern const struct mmops_family __stop_mmops_families[] __attribute__((weak));

int run_op(const struct mmops_op *ops, char **f, int n)
{
	for (; ops->name; ops++) {
		if (!strcmp(ops->name, f[0])) {
			ops->run(f, n);
			return 1;
		}
	}
	return 0;
}

static int family_op(char **f, int n)
{
	for (const struct mmops_family *fam = __start_mmops_families; fam < __stop_mmops_families; fam++)
		if (fam->ops ? run_op(fam->ops, f, n) : fam->op(f, n))
			return 1;
	return 0;
}

static const struct mmops_op core_ops[] = {
	{ "map", op_map }, { "cpu", op_cpu }, { "cow", op_cow }, { "loop", op_loop },
	{ "fill", op_data }, { "write", op_data }, { "verify", op_data },
	{ "ksm", op_ksm }, { "ksmd", op_ksmd }, { "unmerge", op_unmerge }, { "oom", op_oom },
	{ "khugepaged", op_khugepaged }, { "reclaim", op_reclaim },
	{ "dontneed", op_range }, { "mprotect", op_range }, { "munmap", op_range }, { "touch", op_range },
	{ "split", op_range }, { "cold", op_range },
	{ NULL, NULL },
};

int main(int argc, char **argv)
{
	int first = 1, probe = 1;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "--no-probe")) {
		probe = 0;
		first = 2;
	}
	printf("{\"op\": \"start\", \"pid\": %d, \"t0\": %" PRIu64 "}\n", getpid(), now_ns());
	if (probe)
		wait_for_probe();
	for (int i = first; i < argc; i++) {
		char *f[8];
		int n = 0;
		char *save, *tok;

		for (tok = strtok_r(argv[i], ":", &save); tok && n < 8; tok = strtok_r(NULL, ":", &save))
			f[n++] = tok;
		if (n && !run_op(core_ops, f, n) && !family_op(f, n))
			fail(f[0], "unknown operation", 0);
	}
	printf("{\"op\": \"exit\", \"pid\": %d, \"t0\": %" PRIu64 "}\n", getpid(), now_ns());
	return 0;
}
