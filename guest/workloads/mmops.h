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
struct mapping *find(const char *op, const char *name);
ssize_t read_file(const char *path);	/* into scratch, NUL-terminated; -1 if it cannot be read */
long smaps_kb(const char *field, uintptr_t start, uintptr_t end);
long anon_huge_kb(uintptr_t start, uintptr_t end);
void print_private_vmas(void);
void touch(uintptr_t start, size_t len);
void fill_pages(struct mapping *m, uintptr_t start, size_t len, int val);
long bad_pages(struct mapping *m);
int prot_of(const char *op, const char *s);
long read_long(const char *path);
int write_str(const char *path, const char *value);
int find_kthread(const char *comm);

/*
 * An operation family: op() returns 1 when f[0] is one of its operations (and performed it,
 * printing its JSON line), 0 to let the next family look.  Register one per file with
 *   MMOPS_FAMILY(name) = { .op = name_op };
 */
struct mmops_family {
	int (*op)(char **f, int n);
};
#define MMOPS_FAMILY(name) \
	static const struct mmops_family name##_family \
	__attribute__((section("mmops_families"), used, aligned(sizeof(void *))))

#endif /* MMOPS_H */
