// SPDX-License-Identifier: GPL-2.0
/*
 * minivmm: a tiny KVM VMM the harness drives over one SSH channel.
 *
 *   minivmm [--corrupt skip-clear|flip-bit]
 *
 * One JSON object per line on stdin, one JSON object per line on stdout:
 *
 *   {"op": "create", "pages": N, "thp": "default|huge|never", "mergeable": 0|1,
 *    "cap": V (KVM_ENABLE_CAP before the slot exists; omit for none), "flags": F}
 *   {"op": "destroy"}
 *   {"op": "info"}                          pid, the slot's host address, its pages
 *   {"op": "cap", "value": V, "flags": F}   KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
 *   {"op": "flags", "flags": F}             KVM_SET_USER_MEMORY_REGION of the test slot
 *   {"op": "write", "pages": [...], "value": V, "index": 0|1}
 *                                           the L2 writes V (plus the page's index) to each page
 *   {"op": "read", "pages": [...]}          the L2 reads each page's first word: "values"
 *   {"op": "get", "slot": S}                KVM_GET_DIRTY_LOG: "bitmap" as hex, bytes in memory order
 *   {"op": "clear", "slot": S, "first": P, "num": N, "bitmap": "hex"}   KVM_CLEAR_DIRTY_LOG
 *   {"op": "madvise", "offset": B, "length": B, "advice": "dontneed|hugepage|nohugepage|mergeable|
 *                                           unmergeable|cold|pageout"}
 *   {"op": "mprotect", "offset": B, "length": B, "prot": "r|rw"}
 *   {"op": "stats"}                         the VM's binary stats fd: every u64 stat by name
 *
 * Every answer echoes "op" and carries "ret" and "errno" of the ioctl or
 * syscall it made; nothing is swallowed.  A line that is not understood gets
 * {"op": ..., "error": "..."}; the VMM keeps serving.
 *
 * The L2 guest runs in 32-bit protected mode with flat segments and no paging,
 * so it reaches every guest-physical byte below 4 GiB.  Memory slot 0 (not
 * dirty-logged) holds its code and the mailbox; slot 1, the test slot, starts
 * at TEST_GPA and is the only memory the L2 writes when told to.  The L2 waits
 * for commands with `out` to port MBOX_PORT: each command is one KVM_RUN.
 *
 * --corrupt is the oracle's self-test: skip-clear sends the first
 * KVM_CLEAR_DIRTY_LOG of each VM that asks for a bit the last GET reported
 * with an empty bitmap instead (same checks, nothing cleared); flip-bit clears the lowest set bit of the first non-empty
 * KVM_GET_DIRTY_LOG of each VM.  Off by default.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE		4096UL
#define HUGE		(2UL << 20)
#define CTRL_SIZE	(1UL << 20)	/* slot 0: code, mailbox, page list, results */
#define CODE_GPA	0x1000
#define MBOX_GPA	0x8000		/* u32 cmd, value, count */
#define LIST_GPA	0x10000		/* u32 page indexes */
#define RESULT_GPA	0x80000		/* u32 values read */
#define MAX_LIST	((RESULT_GPA - LIST_GPA) / 4)
#define TEST_GPA	0x40000000UL	/* 1 GiB: 2 MiB aligned, so huge pages can map it */
#define TEST_SLOT	1
#define MAX_PAGES	(1UL << 18)	/* 1 GiB of test slot */
#define MBOX_PORT	0x10
#define RUN_TIMEOUT_S	20

enum { CMD_WRITE = 1, CMD_READ = 2, CMD_WRITE_INDEX = 3 };

/*
 * The L2 program.  32-bit code assembled by the host assembler into this
 * binary's read-only data and copied to CODE_GPA.  Addresses are absolute
 * (flat segments, no paging), so it runs wherever the bytes land.
 */
__asm__(
	".pushsection .rodata.l2,\"a\"\n"
	".globl l2_start, l2_end\n"
	".code32\n"
	"l2_start:\n"
	"1:	outb %al, $0x10\n"			/* MBOX_PORT: ready / done */
	"	movl 0x8000, %eax\n"			/* cmd */
	"	movl 0x8004, %edx\n"			/* value */
	"	movl 0x8008, %ecx\n"			/* count */
	"	movl $0x10000, %esi\n"			/* LIST_GPA */
	"	movl $0x80000, %edi\n"			/* RESULT_GPA */
	"	testl %ecx, %ecx\n"
	"	jz 1b\n"
	"	cmpl $1, %eax\n"
	"	je 2f\n"
	"	cmpl $2, %eax\n"
	"	je 3f\n"
	"	cmpl $3, %eax\n"
	"	je 4f\n"
	"	jmp 1b\n"
	"2:	movl (%esi), %ebx\n"			/* write: *(base + page * 4096) = value */
	"	shll $12, %ebx\n"
	"	movl %edx, 0x40000000(%ebx)\n"		/* TEST_GPA */
	"	addl $4, %esi\n"
	"	decl %ecx\n"
	"	jnz 2b\n"
	"	jmp 1b\n"
	"3:	movl (%esi), %ebx\n"			/* read: results[i] = *(base + page * 4096) */
	"	shll $12, %ebx\n"
	"	movl 0x40000000(%ebx), %eax\n"
	"	movl %eax, (%edi)\n"
	"	addl $4, %esi\n"
	"	addl $4, %edi\n"
	"	decl %ecx\n"
	"	jnz 3b\n"
	"	jmp 1b\n"
	"4:	movl (%esi), %ebx\n"			/* write + index: value + page */
	"	movl %ebx, %eax\n"
	"	addl %edx, %eax\n"
	"	shll $12, %ebx\n"
	"	movl %eax, 0x40000000(%ebx)\n"
	"	addl $4, %esi\n"
	"	decl %ecx\n"
	"	jnz 4b\n"
	"	jmp 1b\n"
	"l2_end:\n"
	".code64\n"
	".popsection\n");
extern const unsigned char l2_start[], l2_end[];

struct vm {
	int kvm, fd, vcpu, stats;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *ctrl;			/* slot 0 */
	uint8_t *mem, *map;		/* slot 1 (2 MiB aligned) and the mapping holding it */
	size_t map_len;
	uint64_t pages;
	int cleared_once, flipped_once;	/* --corrupt: once per VM */
};

static struct vm vm = { .kvm = -1, .fd = -1, .vcpu = -1, .stats = -1 };
static uint64_t last_get[MAX_PAGES / 64];	/* the test slot's last GET, for --corrupt skip-clear */
static enum { CORRUPT_OFF, CORRUPT_SKIP_CLEAR, CORRUPT_FLIP_BIT } corrupt;

/* --- output: one JSON object per line ---------------------------------- */

static char out[1 << 22];
static size_t out_len;

static void emit(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out + out_len, sizeof(out) - out_len, fmt, ap);
	va_end(ap);
	if (n > 0)
		out_len = out_len + n < sizeof(out) ? out_len + n : sizeof(out) - 1;
}

static void emit_hex(const void *buf, size_t len)
{
	const uint8_t *b = buf;

	emit("\"");
	for (size_t i = 0; i < len; i++)
		emit("%02x", b[i]);
	emit("\"");
}

static void finish(void)
{
	emit("}\n");
	fwrite(out, 1, out_len, stdout);
	fflush(stdout);
	out_len = 0;
}

static void begin(const char *op)
{
	out_len = 0;
	emit("{\"op\": \"%s\"", op);
}

static void result(long ret, int err)
{
	emit(", \"ret\": %ld, \"errno\": %d", ret, ret < 0 ? err : 0);
}

static void fail(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	for (char *c = msg; *c; c++)	/* the message is JSON string content */
		if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
			*c = '\'';
	emit(", \"error\": \"%s\"", msg);
}

/* --- input: the few shapes the harness sends, looked up by key ---------- */

static const char *find_key(const char *line, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\"", key);
	/* The key is the quoted word followed by ':' ("op": "flags" holds "flags" as a value). */
	for (p = strstr(line, pat); p; p = strstr(p, pat)) {
		p += strlen(pat);
		while (*p == ' ')
			p++;
		if (*p != ':')
			continue;
		p++;
		while (*p == ' ')
			p++;
		return p;
	}
	return NULL;
}

static int get_i64(const char *line, const char *key, int64_t *v)
{
	const char *p = find_key(line, key);
	char *end;

	if (!p)
		return 0;
	errno = 0;
	*v = strtoll(p, &end, 0);
	if (end == p || errno)
		return -1;
	return 1;
}

/* A string value, copied into buf; 1 if present. */
static int get_str(const char *line, const char *key, char *buf, size_t n)
{
	const char *p = find_key(line, key), *q;

	if (!p || *p != '"')
		return 0;
	q = strchr(++p, '"');
	if (!q || (size_t)(q - p) >= n)
		return -1;
	memcpy(buf, p, q - p);
	buf[q - p] = 0;
	return 1;
}

/* An array of non-negative integers; returns the count or -1. */
static long get_list(const char *line, const char *key, uint32_t *list, size_t max)
{
	const char *p = find_key(line, key);
	long n = 0;

	if (!p || *p++ != '[')
		return -1;
	for (;;) {
		char *end;
		unsigned long v;

		while (*p == ' ' || *p == ',')
			p++;
		if (*p == ']')
			return n;
		v = strtoul(p, &end, 0);
		if (end == p || (size_t)n >= max || v > UINT32_MAX)
			return -1;
		list[n++] = v;
		p = end;
	}
}

/* --- the VM ------------------------------------------------------------- */

static volatile sig_atomic_t timed_out;

static void on_alarm(int sig)
{
	(void)sig;
	timed_out = 1;
}

static int set_slot(uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size, void *hva)
{
	struct kvm_userspace_memory_region r = {
		.slot = slot, .flags = flags, .guest_phys_addr = gpa,
		.memory_size = size, .userspace_addr = (uintptr_t)hva,
	};

	return ioctl(vm.fd, KVM_SET_USER_MEMORY_REGION, &r);
}

/* Run the vCPU until the L2 is back at its `out`; 0 or an error message in msg. */
static int run_vcpu(char *msg, size_t n)
{
	for (;;) {
		int r;

		timed_out = 0;
		alarm(RUN_TIMEOUT_S);
		r = ioctl(vm.vcpu, KVM_RUN, 0);
		alarm(0);
		if (r < 0) {
			if (timed_out)
				snprintf(msg, n, "KVM_RUN: the L2 did not exit in %d s", RUN_TIMEOUT_S);
			else
				snprintf(msg, n, "KVM_RUN: %s", strerror(errno));
			return -1;
		}
		if (vm.run->exit_reason == KVM_EXIT_IO && vm.run->io.port == MBOX_PORT)
			return 0;
		if (vm.run->exit_reason == KVM_EXIT_INTR)
			continue;
		snprintf(msg, n, "unexpected exit reason %u (internal error suberror %u) at the L2",
			 vm.run->exit_reason, vm.run->exit_reason == KVM_EXIT_INTERNAL_ERROR ?
			 vm.run->internal.suberror : 0);
		return -1;
	}
}

static void destroy_vm(void)
{
	if (vm.run)
		munmap(vm.run, vm.run_size);
	if (vm.stats >= 0)
		close(vm.stats);
	if (vm.vcpu >= 0)
		close(vm.vcpu);
	if (vm.fd >= 0)
		close(vm.fd);
	if (vm.ctrl)
		munmap(vm.ctrl, CTRL_SIZE);
	if (vm.map)
		munmap(vm.map, vm.map_len);
	if (vm.kvm >= 0)
		close(vm.kvm);
	memset(&vm, 0, sizeof(vm));
	memset(last_get, 0, sizeof(last_get));
	vm.kvm = vm.fd = vm.vcpu = vm.stats = -1;
}

static int enable_cap(int64_t value, int64_t flags)
{
	struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, .flags = flags };

	cap.args[0] = value;
	return ioctl(vm.fd, KVM_ENABLE_CAP, &cap);
}

/* Who holds the test slot and where: the probe attaches to the pid, the cross-check uses the range. */
static void emit_slot(void)
{
	emit(", \"pid\": %d, \"hva\": %" PRIuPTR ", \"gpa\": %lu, \"pages\": %" PRIu64, getpid(),
	     (uintptr_t)vm.mem, TEST_GPA, vm.pages);
}

/* Each step names what failed, so "create" answers with the first failing call. */
static void cmd_create(const char *line)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs = { .rip = CODE_GPA, .rflags = 2 };
	struct kvm_segment seg = { .base = 0, .limit = 0xffffffff, .present = 1, .s = 1, .db = 1, .g = 1 };
	int64_t pages = 16384, mergeable = 0, cap, flags = KVM_MEM_LOG_DIRTY_PAGES;
	char thp[16] = "default", msg[256];
	int has_cap, r;

	if (vm.fd >= 0)
		return fail("a VM exists; destroy it first");
	get_i64(line, "pages", &pages);
	get_i64(line, "mergeable", &mergeable);
	get_i64(line, "flags", &flags);
	has_cap = get_i64(line, "cap", &cap) == 1;
	get_str(line, "thp", thp, sizeof(thp));
	if (pages < 1 || (uint64_t)pages > MAX_PAGES)
		return fail("pages must be 1..%lu", MAX_PAGES);
	vm.pages = pages;

#define STEP(call, what) do { if ((r = (call)) < 0) { result(r, errno); fail("%s: %s", what, strerror(errno)); \
				  destroy_vm(); return; } } while (0)
	STEP(vm.kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), "open /dev/kvm");
	STEP(vm.fd = ioctl(vm.kvm, KVM_CREATE_VM, 0), "KVM_CREATE_VM");
	/* Intel needs these for real-mode emulation; AMD ignores them.  Below the 4 GiB hole. */
	STEP(ioctl(vm.fd, KVM_SET_TSS_ADDR, 0xfffbd000UL), "KVM_SET_TSS_ADDR");
	if (has_cap)
		STEP(enable_cap(cap, 0), "KVM_ENABLE_CAP");

	vm.ctrl = mmap(NULL, CTRL_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	STEP(vm.ctrl == MAP_FAILED ? (vm.ctrl = NULL, -1) : 0, "mmap control slot");
	memcpy(vm.ctrl + CODE_GPA, l2_start, l2_end - l2_start);
	STEP(set_slot(0, 0, 0, CTRL_SIZE, vm.ctrl), "KVM_SET_USER_MEMORY_REGION slot 0");

	/* The test slot's host address is 2 MiB aligned like its GPA, so a THP can back a 2M SPTE. */
	vm.map_len = pages * PAGE + HUGE;
	vm.map = mmap(NULL, vm.map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	STEP(vm.map == MAP_FAILED ? (vm.map = NULL, -1) : 0, "mmap test slot");
	vm.mem = (uint8_t *)(((uintptr_t)vm.map + HUGE - 1) & ~(HUGE - 1));
	if (!strcmp(thp, "huge"))
		STEP(madvise(vm.mem, pages * PAGE, MADV_HUGEPAGE), "madvise(MADV_HUGEPAGE)");
	else if (!strcmp(thp, "never"))
		STEP(madvise(vm.mem, pages * PAGE, MADV_NOHUGEPAGE), "madvise(MADV_NOHUGEPAGE)");
	if (mergeable)
		STEP(madvise(vm.mem, pages * PAGE, MADV_MERGEABLE), "madvise(MADV_MERGEABLE)");
	STEP(set_slot(TEST_SLOT, flags, TEST_GPA, pages * PAGE, vm.mem), "KVM_SET_USER_MEMORY_REGION slot 1");

	STEP(vm.vcpu = ioctl(vm.fd, KVM_CREATE_VCPU, 0), "KVM_CREATE_VCPU");
	STEP(ioctl(vm.kvm, KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
	vm.run_size = r;
	vm.run = mmap(NULL, vm.run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm.vcpu, 0);
	STEP(vm.run == MAP_FAILED ? (vm.run = NULL, -1) : 0, "mmap kvm_run");
	STEP(ioctl(vm.vcpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
	seg.type = 11;		/* code: execute/read, accessed */
	seg.selector = 8;
	sregs.cs = seg;
	seg.type = 3;		/* data: read/write, accessed */
	seg.selector = 16;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
	sregs.cr0 |= 1;		/* protected mode, paging off */
	STEP(ioctl(vm.vcpu, KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");
	STEP(ioctl(vm.vcpu, KVM_SET_REGS, &regs), "KVM_SET_REGS");
	STEP(vm.stats = ioctl(vm.fd, KVM_GET_STATS_FD, 0), "KVM_GET_STATS_FD");
#undef STEP
	/* Run the L2 to its first `out`: from here each command is one KVM_RUN. */
	if (run_vcpu(msg, sizeof(msg))) {
		fail("%s", msg);
		destroy_vm();
		return;
	}
	result(0, 0);
	emit_slot();
}

static uint32_t list[MAX_LIST];

static void cmd_l2(const char *line, int read)
{
	volatile uint32_t *mbox = (volatile uint32_t *)(vm.ctrl + MBOX_GPA);
	int64_t value = 0, index = 0;
	long n = get_list(line, "pages", list, MAX_LIST);
	char msg[256];

	if (n < 0)
		return fail("\"pages\" must be a list of at most %lu page indexes", MAX_LIST);
	for (long i = 0; i < n; i++)
		if (list[i] >= vm.pages)
			return fail("page %u is outside the slot's %" PRIu64 " pages", list[i], vm.pages);
	get_i64(line, "value", &value);
	get_i64(line, "index", &index);
	memcpy(vm.ctrl + LIST_GPA, list, n * 4);
	mbox[0] = read ? CMD_READ : index ? CMD_WRITE_INDEX : CMD_WRITE;
	mbox[1] = value;
	mbox[2] = n;
	if (run_vcpu(msg, sizeof(msg)))
		return fail("%s", msg);
	mbox[0] = mbox[2] = 0;
	result(0, 0);
	if (read) {
		const uint32_t *values = (const uint32_t *)(vm.ctrl + RESULT_GPA);

		emit(", \"values\": [");
		for (long i = 0; i < n; i++)
			emit(i ? ", %u" : "%u", values[i]);
		emit("]");
	}
}

static void cmd_get(const char *line)
{
	static uint64_t bitmap[MAX_PAGES / 64];
	struct kvm_dirty_log log = { .dirty_bitmap = bitmap };
	int64_t slot = TEST_SLOT;
	size_t bytes = (vm.pages + 63) / 64 * 8;
	int r;

	get_i64(line, "slot", &slot);
	log.slot = slot;
	memset(bitmap, 0, bytes);
	r = ioctl(vm.fd, KVM_GET_DIRTY_LOG, &log);
	result(r, errno);
	if (r == 0 && corrupt == CORRUPT_FLIP_BIT && !vm.flipped_once) {
		for (size_t w = 0; w < bytes / 8; w++)
			if (bitmap[w]) {
				bitmap[w] &= bitmap[w] - 1;
				vm.flipped_once = 1;
				break;
			}
	}
	if (r == 0 && log.slot == TEST_SLOT)
		memcpy(last_get, bitmap, bytes);
	if (r == 0) {
		emit(", \"bitmap\": ");
		emit_hex(bitmap, bytes);
	}
}

static int unhex(const char *s, uint8_t *buf, size_t max)
{
	size_t n = strlen(s);

	if (n % 2 || n / 2 > max)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned int b;

		if (sscanf(s + 2 * i, "%2x", &b) != 1)
			return -1;
		buf[i] = b;
	}
	return n / 2;
}

/*
 * --corrupt skip-clear skips a clear that matters: the first one asking for a
 * bit the last GET reported set (with manual protect, still set).
 */
static int asks_for_reported(uint64_t first, uint64_t num, const uint8_t *bitmap)
{
	for (uint64_t k = 0; k < num && first + k < vm.pages; k++)
		if ((bitmap[k / 8] >> (k % 8) & 1) && (last_get[(first + k) / 64] >> ((first + k) % 64) & 1))
			return 1;
	return 0;
}

static void cmd_clear(const char *line)
{
	static uint8_t bitmap[MAX_PAGES / 8 + 8];
	static char hex[MAX_PAGES / 4 + 32];
	struct kvm_clear_dirty_log log = { .dirty_bitmap = bitmap };
	int64_t slot = TEST_SLOT, first = 0, num = 0;
	int r;

	get_i64(line, "slot", &slot);
	get_i64(line, "first", &first);
	get_i64(line, "num", &num);
	if (get_str(line, "bitmap", hex, sizeof(hex)) != 1)
		return fail("\"bitmap\" must be a hex string of at most %lu bytes", sizeof(bitmap));
	memset(bitmap, 0, sizeof(bitmap));
	if (unhex(hex, bitmap, sizeof(bitmap)) < 0)
		return fail("\"bitmap\" must be a hex string of at most %lu bytes", sizeof(bitmap));
	log.slot = slot;
	log.first_page = first;
	log.num_pages = num;
	if (corrupt == CORRUPT_SKIP_CLEAR && !vm.cleared_once && asks_for_reported(first, num, bitmap)) {
		/* The same ioctl (same checks, same errno) with nothing asked: the clear is skipped. */
		memset(bitmap, 0, sizeof(bitmap));
		r = ioctl(vm.fd, KVM_CLEAR_DIRTY_LOG, &log);
		vm.cleared_once = !r;
		return result(r, errno);
	}
	r = ioctl(vm.fd, KVM_CLEAR_DIRTY_LOG, &log);
	result(r, errno);
}

static int range(const char *line, uint8_t **addr, size_t *len, char *msg, size_t n)
{
	int64_t offset = -1, length = -1;

	get_i64(line, "offset", &offset);
	get_i64(line, "length", &length);
	if (offset < 0 || length < 0 || (uint64_t)(offset + length) > vm.pages * PAGE) {
		snprintf(msg, n, "offset and length must lie inside the slot's %" PRIu64 " bytes", vm.pages * PAGE);
		return -1;
	}
	*addr = vm.mem + offset;
	*len = length;
	return 0;
}

struct named { const char *name; int value; };

static int do_madvise(void *addr, size_t len, int advice) { return madvise(addr, len, advice); }
static int do_mprotect(void *addr, size_t len, int prot) { return mprotect(addr, len, prot); }

/* madvise or mprotect over "offset"/"length" of the slot, its argument named by `key` from `names`. */
static void cmd_range(const char *line, const char *key, const struct named *names, size_t count,
		      int (*call)(void *, size_t, int))
{
	char name[32] = "", msg[160];
	uint8_t *addr;
	size_t len;
	int r;

	if (range(line, &addr, &len, msg, sizeof(msg)))
		return fail("%s", msg);
	get_str(line, key, name, sizeof(name));
	for (size_t i = 0; i < count; i++)
		if (!strcmp(name, names[i].name)) {
			r = call(addr, len, names[i].value);
			emit(", \"addr\": %" PRIuPTR, (uintptr_t)addr);
			return result(r, errno);
		}
	fail("unknown %s '%s'", key, name);
}

static const struct named advices[] = {
	{ "dontneed", MADV_DONTNEED }, { "hugepage", MADV_HUGEPAGE }, { "nohugepage", MADV_NOHUGEPAGE },
	{ "mergeable", MADV_MERGEABLE }, { "unmergeable", MADV_UNMERGEABLE }, { "cold", MADV_COLD },
	{ "pageout", MADV_PAGEOUT },
};
static const struct named prots[] = { { "r", PROT_READ }, { "rw", PROT_READ | PROT_WRITE } };

static void cmd_stats(void)
{
	struct kvm_stats_header h;
	char *descs = NULL;
	size_t size;
	int first = 1;

	if (pread(vm.stats, &h, sizeof(h), 0) != sizeof(h)) {
		result(-1, errno);
		return fail("reading the stats header: %s", strerror(errno));
	}
	size = sizeof(struct kvm_stats_desc) + h.name_size;
	descs = malloc(size * h.num_desc);
	if (!descs || pread(vm.stats, descs, size * h.num_desc, h.desc_offset) != (ssize_t)(size * h.num_desc)) {
		free(descs);
		result(-1, errno);
		return fail("reading the stats descriptors: %s", strerror(errno));
	}
	result(0, 0);
	emit(", \"stats\": {");
	for (uint32_t i = 0; i < h.num_desc; i++) {
		struct kvm_stats_desc *d = (struct kvm_stats_desc *)(descs + i * size);
		uint64_t v;

		if (pread(vm.stats, &v, sizeof(v), h.data_offset + d->offset) != sizeof(v))
			continue;
		emit("%s\"%s\": %" PRIu64, first ? "" : ", ", d->name, v);
		first = 0;
	}
	emit("}");
	free(descs);
}

static void serve(const char *line)
{
	char op[32] = "";
	int64_t value = 0, flags = 0;

	if (get_str(line, "op", op, sizeof(op)) != 1) {
		begin("");
		fail("no \"op\" in the request");
		return finish();
	}
	begin(op);
	if (!strcmp(op, "create")) {
		cmd_create(line);
	} else if (vm.fd < 0 && strcmp(op, "destroy")) {
		fail("no VM: create one first");
	} else if (!strcmp(op, "destroy")) {
		destroy_vm();
		result(0, 0);
	} else if (!strcmp(op, "info")) {
		result(0, 0);
		emit_slot();
	} else if (!strcmp(op, "cap")) {
		get_i64(line, "value", &value);
		get_i64(line, "flags", &flags);
		int r = enable_cap(value, flags);
		result(r, errno);
	} else if (!strcmp(op, "flags")) {
		get_i64(line, "flags", &flags);
		int r = set_slot(TEST_SLOT, flags, TEST_GPA, vm.pages * PAGE, vm.mem);
		result(r, errno);
	} else if (!strcmp(op, "write") || !strcmp(op, "read")) {
		cmd_l2(line, !strcmp(op, "read"));
	} else if (!strcmp(op, "get")) {
		cmd_get(line);
	} else if (!strcmp(op, "clear")) {
		cmd_clear(line);
	} else if (!strcmp(op, "madvise")) {
		cmd_range(line, "advice", advices, sizeof(advices) / sizeof(advices[0]), do_madvise);
	} else if (!strcmp(op, "mprotect")) {
		cmd_range(line, "prot", prots, sizeof(prots) / sizeof(prots[0]), do_mprotect);
	} else if (!strcmp(op, "stats")) {
		cmd_stats();
	} else {
		fail("unknown op");
	}
	finish();
}

int main(int argc, char **argv)
{
	static char line[1 << 20];
	struct sigaction sa = { .sa_handler = on_alarm };	/* no SA_RESTART: KVM_RUN returns EINTR */

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--corrupt") && i + 1 < argc && !strcmp(argv[i + 1], "skip-clear"))
			corrupt = CORRUPT_SKIP_CLEAR, i++;
		else if (!strcmp(argv[i], "--corrupt") && i + 1 < argc && !strcmp(argv[i + 1], "flip-bit"))
			corrupt = CORRUPT_FLIP_BIT, i++;
		else {
			printf("{\"op\": \"\", \"error\": \"usage: minivmm [--corrupt skip-clear|flip-bit]\"}\n");
			return 2;
		}
	}
	sigaction(SIGALRM, &sa, NULL);
	printf("{\"op\": \"hello\", \"pid\": %d}\n", getpid());
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		if (!strchr(line, '\n') && !feof(stdin)) {
			begin("");
			fail("request longer than %zu bytes", sizeof(line) - 1);
			finish();
			while (fgets(line, sizeof(line), stdin) && !strchr(line, '\n'))
				;
			continue;
		}
		serve(line);
	}
	destroy_vm();
	return 0;
}
