// SPDX-License-Identifier: GPL-2.0
/*
 * What mmops.c shares with its operation families (mmops-*.c): the mappings it made, the clock of
 * the probe's records, and the helpers every operation uses to act and to report.
 */
#ifndef MMOPS_H
#define MMOPS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PAGE		4096UL
#define HPAGE		(2UL << 20)
#define REGION_BASE	0x7e0000000000UL	/* map N lives at REGION_BASE + N GiB */
#define REGION_STEP	(1UL << 30)
#define MAX_MAPS	16

/* A page's entry in /proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst). */
#define PM_PRESENT	(1ULL << 63)
#define PM_SWAPPED	(1ULL << 62)
#define PM_SOFT_DIRTY	(1ULL << 55)

struct mapping {
	char name[16];
	uintptr_t start;
	size_t size;
	unsigned char *shadow;	/* per page: the byte every byte should hold; 0 = not written */
};

extern struct mapping maps[MAX_MAPS];
extern int nmaps;
extern char scratch[1 << 18];	/* reading /proc must not malloc (heap changes are mm events) */

uint64_t now_ns(void);
/* Print {"op": OP, "error": ...} and exit(1). */
void fail(const char *op, const char *what, int err) __attribute__((noreturn));
size_t parse_size(const char *op, const char *s);
size_t parse_aligned(const char *op, const char *s, size_t align, const char *what);
struct mapping *find(const char *op, const char *name);
/* OP:NAME:OFF:LEN: mapping NAME, *start its start + OFF, *len LEN (not checked against its size). */
struct mapping *range_of(char **f, int n, uintptr_t *start, size_t *len);
/* maps[nmaps] named NAME, at its slot's address, SIZE bytes, its shadow all 0; the caller maps it
 * there and then counts it (nmaps++).  Fails when every slot is taken. */
struct mapping *new_mapping(const char *op, const char *name, size_t size);
ssize_t read_file(const char *path);	/* into scratch, NUL-terminated; -1 if it cannot be read */
char *next_line(const char *p);		/* the line after p's, or NULL after the last */
long smaps_kb(const char *field, uintptr_t start, uintptr_t end);
long anon_huge_kb(uintptr_t start, uintptr_t end);
void print_private_vmas(void);
void read_pagemap(const char *op, uintptr_t start, size_t pages, uint64_t *out);
void touch(uintptr_t start, size_t len);
void fill_pages(struct mapping *m, uintptr_t start, size_t len, int val);
/* Whether the page at addr holds `first` in its first byte and `rest` in every other. */
int page_is(uintptr_t addr, int first, int rest);
/* Whether it holds what a shadow byte says: VAL in every byte, or for 0 a touched page (a 1, then zeros). */
int page_holds(uintptr_t addr, int val);
long bad_pages(struct mapping *m);
int prot_of(const char *op, const char *s);
long read_long(const char *path);
int write_str(const char *path, const char *value);
int find_kthread(const char *comm);
int swap_active(void);
long lru_gen_enabled(void);	/* /sys/kernel/mm/lru_gen/enabled, or -1 without MGLRU */
/* The memory.reclaim file of the workload's own memcg, or fail if it has none of its own. */
void memcg_reclaim_path(const char *op, char *path, size_t size);
/* Write BYTES to that file, timed by *t0 and *t1: 0, or EAGAIN when less was reclaimed; other errors fail. */
int memcg_reclaim(const char *op, const char *path, size_t bytes, uint64_t *t0, uint64_t *t1);

/* An operation: its name (f[0]) and what performs it and prints its JSON line. */
struct mmops_op {
	const char *name;
	void (*run)(char **f, int n);
};

/* Run the operation of OPS (ended by { NULL }) that f[0] names: 1, or 0 if none does. */
int run_op(const struct mmops_op *ops, char **f, int n);

/*
 * An operation family: ops, its table of operations; or op(), which returns 1 when f[0] is one of
 * its operations (and performed it), 0 to let the next family look.  Register one per file with
 *   MMOPS_FAMILY(name) = { .ops = name_ops };
 */
struct mmops_family {
	const struct mmops_op *ops;
	int (*op)(char **f, int n);
};
#define MMOPS_FAMILY(name) \
	static const struct mmops_family name##_family \
	__attribute__((section("mmops_families"), used, aligned(sizeof(void *))))

#endif /* MMOPS_H */
