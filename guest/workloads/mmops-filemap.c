// SPDX-License-Identifier: GPL-2.0
/*
 * mmops' shared file mappings: a file on a block filesystem mapped MAP_SHARED, written through the
 * mapping and with write(2), synced (writeback cleans the mapping's PTEs), punched and truncated
 * (the mapping is zapped), and read back both ways.
 *
 *   fmap:NAME:PATH:SIZE        create PATH (truncated to SIZE, a hole), mmap it MAP_SHARED RW at map
 *                              NAME's fixed address; nothing is touched
 *   fwrite:NAME:OFF:LEN:VAL    write byte VAL over the pages [OFF, OFF+LEN) through the mapping
 *   pwrite:NAME:OFF:LEN:VAL    the same with pwrite(2): the page cache, not the mapping
 *   msync:NAME:OFF:LEN         msync(MS_SYNC) of the mapping's [OFF, OFF+LEN)
 *   fsync:NAME                 fsync(2) of the whole file
 *   punch:NAME:OFF:LEN         fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
 *   fdontneed:NAME:OFF:LEN     madvise(MADV_DONTNEED): the pages leave the mapping, not the file
 *   ftruncate:NAME:SIZE        ftruncate(2); the mapping keeps its size
 *   fverify:NAME               every page below the file's size, through the mapping and with
 *                              pread(2), against what was written (holes and cut pages read 0)
 *
 * OFF, LEN and SIZE are whole pages.  Each page's expected byte is kept in the mapping's shadow
 * (0: zeros); the file's size is tracked so that no access goes past it (that would be SIGBUS).
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

/* Per mapping (by its index in maps[]): the file behind it and the file's size now. */
static struct {
	int is_file;
	int fd;
	size_t size;
} files[MAX_MAPS];

static size_t whole_pages(const char *op, const char *s)
{
	return parse_aligned(op, s, PAGE, "offsets, lengths and sizes are whole pages");
}

/* The mapping NAME, which must be one fmap made. */
static struct mapping *file_map(const char *op, const char *name, int *fd)
{
	struct mapping *m = find(op, name);

	if (!files[m - maps].is_file)
		fail(op, "not a file mapping (fmap)", 0);
	*fd = files[m - maps].fd;
	return m;
}

/* OP:NAME:OFF:LEN on a file mapping: OFF and LEN whole pages, the range inside the file (with
 * in_mapping, inside the mapping, which may reach past the file's end). */
static struct mapping *file_range(char **f, int n, int *fd, size_t *off, size_t *len, int in_mapping)
{
	struct mapping *m;

	if (n < 4)
		fail(f[0], "usage OP:NAME:OFF:LEN", 0);
	m = file_map(f[0], f[1], fd);
	*off = whole_pages(f[0], f[2]);
	*len = whole_pages(f[0], f[3]);
	if (*off + *len > (in_mapping ? m->size : files[m - maps].size))
		fail(f[0], in_mapping ? "past the end of the mapping" : "past the end of the file", 0);
	return m;
}

static void report(const char *op, struct mapping *m, uintptr_t start, uintptr_t end, int val, uint64_t t0,
		   uint64_t t1)
{
	printf("{\"op\": \"%s\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"value\": %d, \"file_size\": %zu, "
	       "\"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n", op, m->name, (unsigned long)start, (unsigned long)end, val,
	       files[m - maps].size, t0, t1);
}

static void op_fmap(char **f, int n)
{
	struct mapping *m;
	uint64_t t0, t1;
	void *p;
	int fd;

	if (n < 4)
		fail("fmap", "usage fmap:NAME:PATH:SIZE", 0);
	m = new_mapping("fmap", f[1], whole_pages("fmap", f[3]));
	t0 = now_ns();
	fd = open(f[2], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		fail("fmap", "open", errno);
	if (ftruncate(fd, m->size))
		fail("fmap", "ftruncate", errno);
	p = mmap((void *)m->start, m->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
	if (p == MAP_FAILED || (uintptr_t)p != m->start)
		fail("fmap", "mmap", errno);
	t1 = now_ns();
	files[nmaps].is_file = 1;
	files[nmaps].fd = fd;
	files[nmaps].size = m->size;
	nmaps++;
	report("fmap", m, m->start, m->start + m->size, 0, t0, t1);
}

/* fwrite and pwrite: whole pages of byte VAL, remembered in the shadow. */
static void op_write(char **f, int n)
{
	const char *op = f[0];
	struct mapping *m;
	size_t off, len;
	uint64_t t0, t1;
	int fd, val;

	if (n < 5)
		fail(op, "usage OP:NAME:OFF:LEN:VAL", 0);
	m = file_range(f, n, &fd, &off, &len, 0);
	val = strtol(f[4], NULL, 0);
	if (val < 1 || val > 255)
		fail(op, "VAL must be 1..255", 0);
	t0 = now_ns();
	if (!strcmp(op, "fwrite")) {
		memset((void *)(m->start + off), val, len);
	} else {
		static unsigned char buf[1 << 16];

		memset(buf, val, sizeof(buf));
		for (size_t done = 0; done < len; ) {
			size_t chunk = len - done < sizeof(buf) ? len - done : sizeof(buf);
			ssize_t w = pwrite(fd, buf, chunk, off + done);

			if (w <= 0)
				fail(op, "pwrite", w < 0 ? errno : 0);
			done += w;
		}
	}
	t1 = now_ns();
	memset(m->shadow + off / PAGE, val, len / PAGE);
	report(op, m, m->start + off, m->start + off + len, val, t0, t1);
}

static void op_sync(char **f, int n)
{
	const char *op = f[0];
	struct mapping *m;
	uintptr_t start, end;
	uint64_t t0, t1;
	int fd, ret;

	if (n < 2 || (!strcmp(op, "msync") && n < 4))
		fail(op, "usage msync:NAME:OFF:LEN | fsync:NAME", 0);
	m = file_map(op, f[1], &fd);
	start = m->start;
	end = m->start + m->size;
	if (!strcmp(op, "msync")) {
		start += whole_pages(op, f[2]);
		end = start + whole_pages(op, f[3]);
	}
	t0 = now_ns();
	ret = !strcmp(op, "msync") ? msync((void *)start, end - start, MS_SYNC) : fsync(fd);
	t1 = now_ns();
	if (ret)
		fail(op, op, errno);
	report(op, m, start, end, 0, t0, t1);
}

static void op_punch(char **f, int n)
{
	struct mapping *m;
	size_t off, len;
	uint64_t t0, t1;
	int fd;

	m = file_range(f, n, &fd, &off, &len, 0);
	t0 = now_ns();
	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len))
		fail("punch", "fallocate(FALLOC_FL_PUNCH_HOLE)", errno);
	t1 = now_ns();
	memset(m->shadow + off / PAGE, 0, len / PAGE);
	report("punch", m, m->start + off, m->start + off + len, 0, t0, t1);
}

static void op_fdontneed(char **f, int n)
{
	struct mapping *m;
	size_t off, len;
	uint64_t t0, t1;
	int fd;

	m = file_range(f, n, &fd, &off, &len, 1);
	t0 = now_ns();
	if (madvise((void *)(m->start + off), len, MADV_DONTNEED))
		fail("fdontneed", "madvise(MADV_DONTNEED)", errno);
	t1 = now_ns();
	report("fdontneed", m, m->start + off, m->start + off + len, 0, t0, t1);
}

static void op_ftruncate(char **f, int n)
{
	struct mapping *m;
	size_t size, old;
	uint64_t t0, t1;
	int fd;

	if (n < 3)
		fail("ftruncate", "usage ftruncate:NAME:SIZE", 0);
	m = file_map("ftruncate", f[1], &fd);
	size = whole_pages("ftruncate", f[2]);
	if (size > m->size)
		fail("ftruncate", "larger than the mapping: its tail could not be checked", 0);
	old = files[m - maps].size;
	t0 = now_ns();
	if (ftruncate(fd, size))
		fail("ftruncate", "ftruncate", errno);
	t1 = now_ns();
	files[m - maps].size = size;
	/* Pages cut off are gone; if the file grows again they read as zeros. */
	if (size < old)
		memset(m->shadow + size / PAGE, 0, (old - size) / PAGE);
	report("ftruncate", m, m->start, m->start + m->size, 0, t0, t1);
}

static void op_fverify(char **f, int n)
{
	static unsigned char buf[PAGE];
	struct mapping *m;
	long bad_mapped = 0, bad_read = 0, bad = 0;
	size_t size;
	uint64_t t0, t1;
	int fd;

	if (n < 2)
		fail("fverify", "usage fverify:NAME", 0);
	m = file_map("fverify", f[1], &fd);
	size = files[m - maps].size;
	t0 = now_ns();
	for (size_t i = 0; i < size / PAGE; i++) {
		int val = m->shadow[i];
		int wrong_mapped = !page_is(m->start + i * PAGE, val, val);
		int wrong_read = pread(fd, buf, PAGE, i * PAGE) != (ssize_t)PAGE || !page_is((uintptr_t)buf, val, val);

		bad_mapped += wrong_mapped;
		bad_read += wrong_read;
		bad += wrong_mapped || wrong_read;
	}
	t1 = now_ns();
	printf("{\"op\": \"fverify\", \"name\": \"%s\", \"start\": %lu, \"end\": %lu, \"file_size\": %zu, "
	       "\"bad_pages\": %ld, \"bad_mapped\": %ld, \"bad_read\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n",
	       m->name, (unsigned long)m->start, (unsigned long)(m->start + m->size), size, bad, bad_mapped, bad_read,
	       t0, t1);
}

static const struct mmops_op filemap_ops[] = {
	{ "fmap", op_fmap }, { "fwrite", op_write }, { "pwrite", op_write }, { "msync", op_sync }, { "fsync", op_sync },
	{ "punch", op_punch }, { "fdontneed", op_fdontneed }, { "ftruncate", op_ftruncate }, { "fverify", op_fverify },
	{ NULL, NULL },
};

MMOPS_FAMILY(filemap) = { .ops = filemap_ops };
