// SPDX-License-Identifier: GPL-2.0
/*
 * minivmm: a tiny KVM VMM the harness drives over one SSH channel.
 *
 *   minivmm [--corrupt skip-clear|flip-bit|skip-delete]
 *
 * One JSON object per line on stdin, one JSON object per line on stdout:
 *
 *   {"op": "create", "pages": N, "thp": "default|huge|never", "mergeable": 0|1,
 *    "cap": V (KVM_ENABLE_CAP before the slot exists; omit for none), "flags": F,
 *    "arena": A, "irqchip": 0|1}           N = 0: no test slot; A > 0: an arena of A pages
 *                                           for "region" (answer: its "arena" address,
 *                                           "maxphyaddr" from CPUID, "tdp" from kvm's npt/ept,
 *                                           KVM_CAP_MULTI_ADDRESS_SPACE's "address_spaces");
 *                                           irqchip 1: KVM_CREATE_IRQCHIP, so the L2 has an
 *                                           in-kernel local APIC and HLT halts in the kernel
 *                                           (answer: the vCPU's "tsc_khz")
 *   {"op": "destroy"}
 *   {"op": "info"}                          pid, the slot's host address, its pages
 *   {"op": "cap", "value": V, "flags": F}   KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
 *   {"op": "cap", "cap": "halt-poll", "value": V, "flags": F}
 *                                           KVM_ENABLE_CAP(KVM_CAP_HALT_POLL): the VM's own
 *                                           maximum polling window in ns (answer: "supported",
 *                                           KVM_CHECK_EXTENSION's value)
 *   {"op": "flags", "flags": F}             KVM_SET_USER_MEMORY_REGION of the test slot
 *   {"op": "write", "pages": [...], "value": V, "index": 0|1}
 *                                           the L2 writes V (plus the page's index) to each page
 *   {"op": "read", "pages": [...]}          the L2 reads each page's first word: "values"
 *   {"op": "get", "slot": S}                KVM_GET_DIRTY_LOG: "bitmap" as hex, bytes in memory order
 *   {"op": "clear", "slot": S, "first": P, "num": N, "bitmap": "hex"}   KVM_CLEAR_DIRTY_LOG
 *   {"op": "madvise", "offset": B, "length": B, "advice": "dontneed|hugepage|nohugepage|mergeable|
 *                                           unmergeable|cold|pageout"}
 *   {"op": "mprotect", "offset": B, "length": B, "prot": "r|rw"}
 *   {"op": "stats", "vcpu": 0|1}            the VM's (or the vCPU's) binary stats fd: every u64
 *                                           stat by name in "stats", every histogram's buckets
 *                                           in "hists"
 *   {"op": "region", "slot": S, "flags": F, "gpa": G, "size": B, "offset": O | "hva": H}
 *                                           KVM_SET_USER_MEMORY_REGION as given, its host address
 *                                           the arena's plus O bytes (or H itself): a new id adds
 *                                           a slot, size 0 deletes, a new gpa moves, new flags
 *                                           re-flag; the kernel tells them apart
 *   {"op": "load", "gpas": [...], "size": 1|2|4, "fill": F}
 *                                           the L2 reads each GPA: "values" (zero-extended); each
 *                                           KVM_EXIT_MMIO on the way is answered with F's low bytes
 *   {"op": "store", "gpas": [...], "size": 1|2|4, "value": V}
 *                                           the L2 writes V + i to the i-th GPA (low bytes)
 *   {"op": "halt", "ns": [...]}             (irqchip VMs) for each duration, the L2 arms its
 *                                           local APIC timer one-shot for that many ns and
 *                                           executes HLT until the timer's interrupt came:
 *                                           "halts", per duration {"ns", "tsc" (the L2's TSC
 *                                           cycles from arming to waking), "l2_ns" (the same in
 *                                           ns at "tsc_khz"), "irqs" (timer interrupts taken),
 *                                           "hlts" (HLTs executed)}; "other_irqs": interrupts
 *                                           on other vectors during the request
 *
 * "load" and "store" answer "exits": every KVM_EXIT_MMIO of the request, in
 * order, as {"addr", "len", "write", "data"} (data: the bytes written, little
 * endian; 0 for reads).  Their GPAs are size-aligned, below 4 GiB and above
 * slot 0.
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
 * Slot 0 also holds a GDT, an IDT and a stack, so the L2 can take interrupts:
 * its local APIC's timer (vector TIMER_VECTOR) for "halt", any other vector
 * counted, an exception reported through `out` to FAULT_PORT.
 *
 * --corrupt is the oracle's self-test: skip-clear sends the first
 * KVM_CLEAR_DIRTY_LOG of each VM that asks for a bit the last GET reported
 * with an empty bitmap instead (same checks, nothing cleared); flip-bit clears the lowest set bit of the first non-empty
 * KVM_GET_DIRTY_LOG of each VM; skip-delete answers success to the first
 * "region" of each VM that deletes a slot a "region" made, without making the
 * ioctl.  Off by default.
 */
#define _GNU_SOURCE
#include <cpuid.h>
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
#define MBOX_GPA	0x8000		/* u32 cmd, value, count, size */
#define LIST_GPA	0x10000		/* u32 page indexes */
#define RESULT_GPA	0x80000		/* u32 values read */
#define MAX_LIST	((RESULT_GPA - LIST_GPA) / 4)
#define TEST_GPA	0x40000000UL	/* 1 GiB: 2 MiB aligned, so huge pages can map it */
#define TEST_SLOT	1
#define MAX_PAGES	(1UL << 18)	/* 1 GiB of test slot */
#define MBOX_PORT	0x10
#define FAULT_PORT	0x11		/* the L2 took an exception */
#define GDT_GPA		0x6000
#define IDT_GPA		0x6800		/* 256 gates of 8 bytes, up to 0x7000 */
#define STACK_TOP	0xf000		/* grows down towards the mailbox's page */
#define TIMER_VECTOR	0x40
#define MAX_HALTS	256		/* durations per "halt" */
#define MAX_HALT_NS	1000000000UL	/* one halt: at most 1 s (the timer's count is 32 bits) */
#define MAX_HALTS_NS	10000000000ULL	/* one "halt": at most 10 s, well inside RUN_TIMEOUT_S */
#define RUN_TIMEOUT_S	20
#define MAX_ARENA	(1UL << 16)	/* 256 MiB of arena */
#define MAX_ACCESSES	64		/* GPAs per load/store */
/* KVM's slot ids as (address space << 16 | id): x86 has two address spaces, ids below 1 << 15. */
#define SLOT_INDEXES	(2 << 16)

enum { CMD_WRITE = 1, CMD_READ = 2, CMD_WRITE_INDEX = 3, CMD_LOAD = 5, CMD_STORE = 6, CMD_HALT = 7 };
/* Mailbox words (u32 at MBOX_GPA): cmd, value, count, size, then what the L2's handlers count. */
enum { MBOX_CMD, MBOX_VALUE, MBOX_COUNT, MBOX_SIZE, MBOX_TIMER_IRQS, MBOX_HLTS, MBOX_OTHER_IRQS, MBOX_SKIPPED };

/*
 * The L2 program.  32-bit code assembled by the host assembler into this
 * binary's read-only data and copied to CODE_GPA.  Addresses are absolute
 * (flat segments, no paging), so it runs wherever the bytes land.
 */
__asm__(
	".pushsection .rodata.l2,\"a\"\n"
	".globl l2_start, l2_end, l2_timer, l2_other, l2_fault\n"
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
	"	movl 0x800c, %ebp\n"			/* size, for load and store */
	"	cmpl $5, %eax\n"
	"	je 5f\n"
	"	cmpl $6, %eax\n"
	"	je 6f\n"
	"	cmpl $7, %eax\n"
	"	je 7f\n"
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
	"5:	movl (%esi), %ebx\n"			/* load: results[i] = *(size *)gpas[i] */
	"	cmpl $1, %ebp\n"
	"	je 51f\n"
	"	cmpl $2, %ebp\n"
	"	je 52f\n"
	"	movl (%ebx), %eax\n"
	"	jmp 53f\n"
	"51:	movzbl (%ebx), %eax\n"
	"	jmp 53f\n"
	"52:	movzwl (%ebx), %eax\n"
	"53:	movl %eax, (%edi)\n"
	"	addl $4, %esi\n"
	"	addl $4, %edi\n"
	"	decl %ecx\n"
	"	jnz 5b\n"
	"	jmp 1b\n"
	"6:	movl (%esi), %ebx\n"			/* store: *(size *)gpas[i] = value + i */
	"	cmpl $1, %ebp\n"
	"	je 61f\n"
	"	cmpl $2, %ebp\n"
	"	je 62f\n"
	"	movl %edx, (%ebx)\n"
	"	jmp 63f\n"
	"61:	movb %dl, (%ebx)\n"
	"	jmp 63f\n"
	"62:	movw %dx, (%ebx)\n"
	"63:	incl %edx\n"
	"	addl $4, %esi\n"
	"	decl %ecx\n"
	"	jnz 6b\n"
	"	jmp 1b\n"
	/*
	 * halt: the local APIC (xAPIC MMIO at 0xfee00000, emulated by the
	 * in-kernel irqchip) software-enabled, its timer one-shot at divide 1
	 * (so the initial count is in ns: KVM's APIC bus cycle is 1 ns); per
	 * duration, results[4i..4i+3] = TSC cycles (lo, hi) from arming to
	 * waking, timer interrupts, HLTs tried.  `sti; hlt` should let no
	 * interrupt in before HLT starts (STI's shadow), but nested SVM does
	 * not always keep the shadow across a VM exit on the HLT: an interrupt
	 * taken there returns to the HLT and would halt for good, so the
	 * handlers step over it (and count that in MBOX_SKIPPED).  Any wake
	 * before the timer's interrupt halts again.
	 */
	"7:	movl $0x1ff, 0xfee000f0\n"		/* SVR: enabled, spurious vector 0xff */
	"	movl $0xb, 0xfee003e0\n"		/* TDCR: divide by 1 */
	"	movl $0x40, 0xfee00320\n"		/* LVTT: one-shot, TIMER_VECTOR, unmasked */
	"71:	movl $0, 0x8010\n"			/* MBOX_TIMER_IRQS */
	"	movl $0, 0x8014\n"			/* MBOX_HLTS */
	"	rdtsc\n"
	"	movl %eax, (%edi)\n"
	"	movl %edx, 4(%edi)\n"
	"	movl (%esi), %eax\n"
	"	movl %eax, 0xfee00380\n"		/* TMICT: the timer starts */
	"72:	incl 0x8014\n"			/* MBOX_HLTS */
	"	sti\n"
	"l2_hlt:	hlt\n"
	"	cli\n"
	"	cmpl $0, 0x8010\n"
	"	je 72b\n"
	"	rdtsc\n"
	"	subl (%edi), %eax\n"
	"	sbbl 4(%edi), %edx\n"
	"	movl %eax, (%edi)\n"
	"	movl %edx, 4(%edi)\n"
	"	movl 0x8010, %eax\n"
	"	movl %eax, 8(%edi)\n"
	"	movl 0x8014, %eax\n"
	"	movl %eax, 12(%edi)\n"
	"	addl $4, %esi\n"
	"	addl $16, %edi\n"
	"	decl %ecx\n"
	"	jnz 71b\n"
	"	jmp 1b\n"
	/* Interrupt gates: the timer's, every other vector's (both EOI), the exceptions'. */
	"l2_timer:\n"
	"	incl 0x8010\n"				/* MBOX_TIMER_IRQS */
	"	jmp 73f\n"
	"l2_other:\n"
	"	incl 0x8018\n"				/* MBOX_OTHER_IRQS */
	"73:	movl $0, 0xfee000b0\n"			/* EOI */
	"	cmpl $(0x1000 + l2_hlt - l2_start), (%esp)\n"	/* CODE_GPA: back to the HLT? */
	"	jne 74f\n"
	"	incl (%esp)\n"				/* then past it (HLT is one byte) */
	"	incl 0x801c\n"				/* MBOX_SKIPPED */
	"74:	iret\n"
	"l2_fault:\n"
	"	outb %al, $0x11\n"			/* FAULT_PORT */
	"	jmp l2_fault\n"
	"l2_end:\n"
	".code64\n"
	".popsection\n");
extern const unsigned char l2_start[], l2_end[], l2_timer[], l2_other[], l2_fault[];

struct vm {
	int kvm, fd, vcpu, stats, vcpu_stats, irqchip;
	struct kvm_run *run;
	size_t run_size;
	uint8_t *ctrl;			/* slot 0 */
	uint8_t *mem, *map;		/* slot 1 (2 MiB aligned) and the mapping holding it */
	size_t map_len;
	uint64_t pages;
	uint8_t *arena, *arena_map;	/* the host memory "region" slots map (2 MiB aligned) */
	size_t arena_map_len;
	uint64_t arena_pages;
	int cleared_once, flipped_once, skipped_delete;	/* --corrupt: once per VM */
};

static struct vm vm = { .kvm = -1, .fd = -1, .vcpu = -1, .stats = -1, .vcpu_stats = -1 };
/* Which slots a "region" made and none deleted since, for --corrupt skip-delete. */
static uint8_t made[SLOT_INDEXES];
static uint64_t last_get[MAX_PAGES / 64];	/* the test slot's last GET, for --corrupt skip-clear */
static enum { CORRUPT_OFF, CORRUPT_SKIP_CLEAR, CORRUPT_FLIP_BIT, CORRUPT_SKIP_DELETE } corrupt;

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

/* An unsigned 64-bit value (GPAs, host addresses, sizes); 1 if present, -1 if not a number. */
static int get_u64(const char *line, const char *key, uint64_t *v)
{
	const char *p = find_key(line, key);
	char *end;

	if (!p)
		return 0;
	if (*p == '-')
		return -1;
	errno = 0;
	*v = strtoull(p, &end, 0);
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

struct mmio_exit { uint64_t addr, data; uint32_t len, write; };

/*
 * Where "load" and "store" keep the request's KVM_EXIT_MMIOs; the other
 * requests touch only memory, so for them an MMIO exit is an error.
 */
struct mmio_log {
	struct mmio_exit exits[MAX_ACCESSES];
	int count;
	uint32_t fill;			/* what a read from MMIO returns */
};

/* Record one KVM_EXIT_MMIO and complete it: a read gets the fill's low bytes. */
static int take_mmio(struct mmio_log *log, char *msg, size_t n)
{
	struct mmio_exit *e;
	uint64_t fill = log->fill;

	/* Each access exits at most once: more exits than accesses is a VMM that would loop. */
	if (log->count >= MAX_ACCESSES) {
		snprintf(msg, n, "more than %d KVM_EXIT_MMIO in one request", MAX_ACCESSES);
		return -1;
	}
	if (vm.run->mmio.len > sizeof(vm.run->mmio.data)) {
		snprintf(msg, n, "KVM_EXIT_MMIO of %u bytes", vm.run->mmio.len);
		return -1;
	}
	e = &log->exits[log->count++];
	e->addr = vm.run->mmio.phys_addr;
	e->len = vm.run->mmio.len;
	e->write = vm.run->mmio.is_write;
	e->data = 0;
	if (e->write)
		memcpy(&e->data, vm.run->mmio.data, e->len);
	else
		memcpy(vm.run->mmio.data, &fill, e->len);
	return 0;
}

/*
 * Run the vCPU until the L2 is back at its `out`; 0 or an error message in msg.
 * With a log, KVM_EXIT_MMIOs are recorded and completed; without, they are errors.
 */
static int run_vcpu_mmio(char *msg, size_t n, struct mmio_log *log)
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
		if (vm.run->exit_reason == KVM_EXIT_IO && vm.run->io.port == FAULT_PORT) {
			snprintf(msg, n, "the L2 took an exception (a fault gate of its IDT)");
			return -1;
		}
		if (vm.run->exit_reason == KVM_EXIT_INTR)
			continue;
		if (vm.run->exit_reason == KVM_EXIT_MMIO && log) {
			if (take_mmio(log, msg, n))
				return -1;
			continue;
		}
		if (vm.run->exit_reason == KVM_EXIT_MMIO) {
			snprintf(msg, n, "unexpected KVM_EXIT_MMIO at %#llx (%u bytes, %s) at the L2",
				 (unsigned long long)vm.run->mmio.phys_addr, vm.run->mmio.len,
				 vm.run->mmio.is_write ? "write" : "read");
			return -1;
		}
		snprintf(msg, n, "unexpected exit reason %u (internal error suberror %u) at the L2",
			 vm.run->exit_reason, vm.run->exit_reason == KVM_EXIT_INTERNAL_ERROR ?
			 vm.run->internal.suberror : 0);
		return -1;
	}
}

static int run_vcpu(char *msg, size_t n)
{
	return run_vcpu_mmio(msg, n, NULL);
}

static void destroy_vm(void)
{
	if (vm.run)
		munmap(vm.run, vm.run_size);
	if (vm.stats >= 0)
		close(vm.stats);
	if (vm.vcpu_stats >= 0)
		close(vm.vcpu_stats);
	if (vm.vcpu >= 0)
		close(vm.vcpu);
	if (vm.fd >= 0)
		close(vm.fd);
	if (vm.ctrl)
		munmap(vm.ctrl, CTRL_SIZE);
	if (vm.map)
		munmap(vm.map, vm.map_len);
	if (vm.arena_map)
		munmap(vm.arena_map, vm.arena_map_len);
	if (vm.kvm >= 0)
		close(vm.kvm);
	memset(&vm, 0, sizeof(vm));
	memset(last_get, 0, sizeof(last_get));
	memset(made, 0, sizeof(made));
	vm.kvm = vm.fd = vm.vcpu = vm.stats = vm.vcpu_stats = -1;
}

static int enable_cap(uint32_t which, uint64_t value, int64_t flags)
{
	struct kvm_enable_cap cap = { .cap = which, .flags = flags };

	cap.args[0] = value;
	return ioctl(vm.fd, KVM_ENABLE_CAP, &cap);
}

/*
 * A flat GDT (code 8, data 16: what KVM_SET_SREGS loads) and an IDT whose
 * gates lead to the L2's handlers: interrupt delivery and `iret` read them
 * from memory, unlike the segment caches KVM_SET_SREGS sets.
 */
static void write_tables(uint8_t *ctrl)
{
	static const uint64_t gdt[] = { 0, 0x00cf9b000000ffffULL, 0x00cf93000000ffffULL };
	uint64_t *idt = (uint64_t *)(ctrl + IDT_GPA);

	memcpy(ctrl + GDT_GPA, gdt, sizeof(gdt));
	for (int v = 0; v < 256; v++) {
		const unsigned char *h = v < 32 ? l2_fault : v == TIMER_VECTOR ? l2_timer : l2_other;
		uint32_t off = CODE_GPA + (h - l2_start);

		/* 32-bit interrupt gate, DPL 0, present, selector 8. */
		idt[v] = (off & 0xffffULL) | 8ULL << 16 | 0x8e00ULL << 32 | (uint64_t)(off >> 16) << 48;
	}
}

/* Who holds the test slot and where: the probe attaches to the pid, the cross-check uses the range. */
static void emit_slot(void)
{
	emit(", \"pid\": %d, \"hva\": %" PRIuPTR ", \"gpa\": %lu, \"pages\": %" PRIu64, getpid(),
	     (uintptr_t)vm.mem, TEST_GPA, vm.pages);
}

/*
 * What bounds a slot's GPA: KVM refuses a slot past kvm_mmu_max_gfn(), which
 * is CPUID 0x80000008's MAXPHYADDR with TDP (npt/ept on) and 52 bits without.
 */
static int maxphyaddr(void)
{
	unsigned int a, b, c, d;

	if (!__get_cpuid(0x80000000, &a, &b, &c, &d) || a < 0x80000008)
		return 0;
	__get_cpuid(0x80000008, &a, &b, &c, &d);
	return a & 0xff;
}

/* 1 when the loaded vendor module uses TDP (npt or ept), 0 when not, -1 when neither is loaded. */
static int tdp_enabled(void)
{
	static const char *const params[] = {
		"/sys/module/kvm_amd/parameters/npt", "/sys/module/kvm_intel/parameters/ept",
	};

	for (size_t i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
		FILE *f = fopen(params[i], "r");
		int c;

		if (!f)
			continue;
		c = fgetc(f);
		fclose(f);
		return c == 'Y' || c == '1';
	}
	return -1;
}

/* The arena, and what bounds a slot: the GPA bits and the address spaces slot ids may name. */
static void emit_arena(void)
{
	emit(", \"arena\": %" PRIuPTR ", \"arena_pages\": %" PRIu64 ", \"maxphyaddr\": %d, \"tdp\": %d, "
	     "\"address_spaces\": %d", (uintptr_t)vm.arena, vm.arena_pages, maxphyaddr(), tdp_enabled(),
	     ioctl(vm.fd, KVM_CHECK_EXTENSION, KVM_CAP_MULTI_ADDRESS_SPACE));
}

/* Each step names what failed, so "create" answers with the first failing call. */
static void cmd_create(const char *line)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs = { .rip = CODE_GPA, .rflags = 2, .rsp = STACK_TOP };
	struct kvm_segment seg = { .base = 0, .limit = 0xffffffff, .present = 1, .s = 1, .db = 1, .g = 1 };
	int64_t pages = 16384, mergeable = 0, cap, flags = KVM_MEM_LOG_DIRTY_PAGES, arena = 0, irqchip = 0;
	char thp[16] = "default", msg[256];
	int has_cap, r;

	if (vm.fd >= 0)
		return fail("a VM exists; destroy it first");
	get_i64(line, "pages", &pages);
	get_i64(line, "mergeable", &mergeable);
	get_i64(line, "flags", &flags);
	has_cap = get_i64(line, "cap", &cap) == 1;
	get_i64(line, "arena", &arena);
	get_i64(line, "irqchip", &irqchip);
	get_str(line, "thp", thp, sizeof(thp));
	if (pages < 0 || (uint64_t)pages > MAX_PAGES)
		return fail("pages must be 0..%lu", MAX_PAGES);
	if (arena < 0 || (uint64_t)arena > MAX_ARENA)
		return fail("arena must be 0..%lu pages", MAX_ARENA);
	vm.pages = pages;

#define STEP(call, what) do { if ((r = (call)) < 0) { result(r, errno); fail("%s: %s", what, strerror(errno)); \
				  destroy_vm(); return; } } while (0)
	STEP(vm.kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), "open /dev/kvm");
	STEP(vm.fd = ioctl(vm.kvm, KVM_CREATE_VM, 0), "KVM_CREATE_VM");
	/* Intel needs these for real-mode emulation; AMD ignores them.  Below the 4 GiB hole. */
	STEP(ioctl(vm.fd, KVM_SET_TSS_ADDR, 0xfffbd000UL), "KVM_SET_TSS_ADDR");
	if (has_cap)
		STEP(enable_cap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, cap, 0), "KVM_ENABLE_CAP");
	/* Before the vCPU: it gets its in-kernel local APIC at creation. */
	if (irqchip)
		STEP(ioctl(vm.fd, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
	vm.irqchip = !!irqchip;

	vm.ctrl = mmap(NULL, CTRL_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	STEP(vm.ctrl == MAP_FAILED ? (vm.ctrl = NULL, -1) : 0, "mmap control slot");
	memcpy(vm.ctrl + CODE_GPA, l2_start, l2_end - l2_start);
	write_tables(vm.ctrl);
	STEP(set_slot(0, 0, 0, CTRL_SIZE, vm.ctrl), "KVM_SET_USER_MEMORY_REGION slot 0");

	/* The test slot's host address is 2 MiB aligned like its GPA, so a THP can back a 2M SPTE. */
	if (pages) {
		vm.map_len = pages * PAGE + HUGE;
		vm.map = mmap(NULL, vm.map_len, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		STEP(vm.map == MAP_FAILED ? (vm.map = NULL, -1) : 0, "mmap test slot");
		vm.mem = (uint8_t *)(((uintptr_t)vm.map + HUGE - 1) & ~(HUGE - 1));
		if (!strcmp(thp, "huge"))
			STEP(madvise(vm.mem, pages * PAGE, MADV_HUGEPAGE), "madvise(MADV_HUGEPAGE)");
		else if (!strcmp(thp, "never"))
			STEP(madvise(vm.mem, pages * PAGE, MADV_NOHUGEPAGE), "madvise(MADV_NOHUGEPAGE)");
		if (mergeable)
			STEP(madvise(vm.mem, pages * PAGE, MADV_MERGEABLE), "madvise(MADV_MERGEABLE)");
		STEP(set_slot(TEST_SLOT, flags, TEST_GPA, pages * PAGE, vm.mem),
		     "KVM_SET_USER_MEMORY_REGION slot 1");
	}
	/*
	 * The arena lives as long as the VM: slots come and go over it, so a
	 * slot deleted and made again over the same bytes finds their data.
	 * 2 MiB aligned, so a slot with a 2 MiB aligned GPA and offset can be
	 * mapped huge.
	 */
	if (arena) {
		vm.arena_pages = arena;
		vm.arena_map_len = arena * PAGE + HUGE;
		vm.arena_map = mmap(NULL, vm.arena_map_len, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		STEP(vm.arena_map == MAP_FAILED ? (vm.arena_map = NULL, -1) : 0, "mmap arena");
		vm.arena = (uint8_t *)(((uintptr_t)vm.arena_map + HUGE - 1) & ~(HUGE - 1));
	}

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
	sregs.gdt.base = GDT_GPA;
	sregs.gdt.limit = 3 * 8 - 1;
	sregs.idt.base = IDT_GPA;
	sregs.idt.limit = 256 * 8 - 1;
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
	if (vm.arena)
		emit_arena();
	if (vm.irqchip)
		emit(", \"tsc_khz\": %d", ioctl(vm.vcpu, KVM_GET_TSC_KHZ, 0));
}

static uint32_t list[MAX_LIST];

static void cmd_l2(const char *line, int read)
{
	volatile uint32_t *mbox = (volatile uint32_t *)(vm.ctrl + MBOX_GPA);
	int64_t value = 0, index = 0;
	long n = get_list(line, "pages", list, MAX_LIST);
	char msg[256];

	if (!vm.pages)
		return fail("no test slot: create with \"pages\" above 0");
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

static void cmd_stats(const char *line)
{
	struct kvm_stats_header h;
	char *descs = NULL;
	size_t size;
	int first = 1, fd = vm.stats;
	int64_t vcpu = 0;

	get_i64(line, "vcpu", &vcpu);
	if (vcpu) {
		if (vm.vcpu_stats < 0)
			vm.vcpu_stats = ioctl(vm.vcpu, KVM_GET_STATS_FD, 0);
		if (vm.vcpu_stats < 0) {
			result(-1, errno);
			return fail("KVM_GET_STATS_FD on the vCPU: %s", strerror(errno));
		}
		fd = vm.vcpu_stats;
	}
	if (pread(fd, &h, sizeof(h), 0) != sizeof(h)) {
		result(-1, errno);
		return fail("reading the stats header: %s", strerror(errno));
	}
	size = sizeof(struct kvm_stats_desc) + h.name_size;
	descs = malloc(size * h.num_desc);
	if (!descs || pread(fd, descs, size * h.num_desc, h.desc_offset) != (ssize_t)(size * h.num_desc)) {
		free(descs);
		result(-1, errno);
		return fail("reading the stats descriptors: %s", strerror(errno));
	}
	result(0, 0);
	emit(", \"stats\": {");
	for (uint32_t i = 0; i < h.num_desc; i++) {
		struct kvm_stats_desc *d = (struct kvm_stats_desc *)(descs + i * size);
		uint64_t v;

		if (d->size != 1 || pread(fd, &v, sizeof(v), h.data_offset + d->offset) != sizeof(v))
			continue;
		emit("%s\"%s\": %" PRIu64, first ? "" : ", ", d->name, v);
		first = 0;
	}
	emit("}, \"hists\": {");
	first = 1;
	for (uint32_t i = 0; i < h.num_desc; i++) {
		struct kvm_stats_desc *d = (struct kvm_stats_desc *)(descs + i * size);
		uint64_t v[64];

		/* Histograms (and any other array): every bucket, in order. */
		if (d->size <= 1 || d->size > 64 ||
		    pread(fd, v, d->size * sizeof(v[0]), h.data_offset + d->offset) != (ssize_t)(d->size * sizeof(v[0])))
			continue;
		emit("%s\"%s\": [", first ? "" : ", ", d->name);
		for (uint32_t k = 0; k < d->size; k++)
			emit(k ? ", %" PRIu64 : "%" PRIu64, v[k]);
		emit("]");
		first = 0;
	}
	emit("}");
	free(descs);
}

/*
 * KVM_SET_USER_MEMORY_REGION exactly as asked, so every bad argument reaches
 * the kernel's checks.  Slot 0 holds the L2's code and mailbox: deleting it
 * would lose the L2, so that one request is refused (moving it cannot be
 * asked: its host address is not the arena's).
 */
static void cmd_region(const char *line)
{
	uint64_t slot = 0, flags = 0, gpa = 0, size = 0, offset = 0, hva = 0;
	int has_offset, has_hva, r;

	if (get_u64(line, "slot", &slot) != 1 || slot > UINT32_MAX || get_u64(line, "flags", &flags) != 1 ||
	    flags > UINT32_MAX || get_u64(line, "gpa", &gpa) != 1 || get_u64(line, "size", &size) != 1)
		return fail("\"slot\", \"flags\" (u32), \"gpa\" and \"size\" (u64) are required");
	has_offset = get_u64(line, "offset", &offset);
	has_hva = get_u64(line, "hva", &hva);
	if (has_offset < 0 || has_hva < 0 || has_offset + has_hva != 1)
		return fail("exactly one of \"offset\" (into the arena) and \"hva\" (u64) is required");
	if (has_offset && !vm.arena)
		return fail("no arena: create with \"arena\" above 0");
	if (has_offset)
		hva = (uintptr_t)vm.arena + offset;
	if (slot == 0 && size == 0)
		return fail("slot 0 holds the L2's code and mailbox; deleting it would lose the L2");
	emit(", \"hva\": %" PRIu64, hva);
	if (corrupt == CORRUPT_SKIP_DELETE && !vm.skipped_delete && size == 0 && slot < SLOT_INDEXES &&
	    made[slot]) {
		/* The self-test's damage: the slot stays, the answer says it went. */
		vm.skipped_delete = 1;
		made[slot] = 0;
		return result(0, 0);
	}
	r = set_slot(slot, flags, gpa, size, (void *)(uintptr_t)hva);
	result(r, errno);
	if (r == 0 && slot < SLOT_INDEXES)
		made[slot] = size != 0;
}

/* The GPAs of a load or store: size-aligned (so no access crosses a page), above slot 0, below 4 GiB. */
static long access_list(const char *line, int64_t *size, char *msg, size_t n)
{
	long count = get_list(line, "gpas", list, MAX_ACCESSES);

	if (count < 0) {
		snprintf(msg, n, "\"gpas\" must be a list of at most %d GPAs below 4 GiB", MAX_ACCESSES);
		return -1;
	}
	if (get_i64(line, "size", size) != 1 || (*size != 1 && *size != 2 && *size != 4)) {
		snprintf(msg, n, "\"size\" must be 1, 2 or 4");
		return -1;
	}
	for (long i = 0; i < count; i++)
		if (list[i] < CTRL_SIZE || list[i] % *size) {
			snprintf(msg, n, "GPA %#x is in slot 0 or not %" PRId64 "-byte aligned", list[i], *size);
			return -1;
		}
	return count;
}

/* "load" (the L2 reads each GPA) or "store" (writes value + i to the i-th). */
static void cmd_access(const char *line, int store)
{
	volatile uint32_t *mbox = (volatile uint32_t *)(vm.ctrl + MBOX_GPA);
	static struct mmio_log log;
	int64_t size = 0, value = 0, fill = 0;
	char msg[256];
	long n = access_list(line, &size, msg, sizeof(msg));

	if (n < 0)
		return fail("%s", msg);
	get_i64(line, "value", &value);
	get_i64(line, "fill", &fill);
	memset(&log, 0, sizeof(log));
	log.fill = fill;
	memcpy(vm.ctrl + LIST_GPA, list, n * 4);
	mbox[0] = store ? CMD_STORE : CMD_LOAD;
	mbox[1] = value;
	mbox[2] = n;
	mbox[3] = size;
	if (run_vcpu_mmio(msg, sizeof(msg), &log))
		return fail("%s", msg);
	mbox[0] = mbox[2] = 0;
	result(0, 0);
	if (!store) {
		const uint32_t *values = (const uint32_t *)(vm.ctrl + RESULT_GPA);

		emit(", \"values\": [");
		for (long i = 0; i < n; i++)
			emit(i ? ", %u" : "%u", values[i]);
		emit("]");
	}
	emit(", \"exits\": [");
	for (int i = 0; i < log.count; i++)
		emit("%s{\"addr\": %" PRIu64 ", \"len\": %u, \"write\": %u, \"data\": %" PRIu64 "}",
		     i ? ", " : "", log.exits[i].addr, log.exits[i].len, log.exits[i].write, log.exits[i].data);
	emit("]");
}

/*
 * KVM_ENABLE_CAP: MANUAL_DIRTY_LOG_PROTECT2 by default, KVM_CAP_HALT_POLL
 * with "cap": "halt-poll" (its value a u64, so the kernel sees one that does
 * not fit its unsigned int).
 */
static void cmd_cap(const char *line)
{
	char which[16] = "";
	int64_t value = 0, flags = 0;
	uint64_t window = 0;
	int r;

	get_i64(line, "flags", &flags);
	if (get_str(line, "cap", which, sizeof(which)) == 1) {
		if (strcmp(which, "halt-poll"))
			return fail("unknown cap '%s'", which);
		if (get_u64(line, "value", &window) != 1)
			return fail("\"value\" (u64) is required");
		r = enable_cap(KVM_CAP_HALT_POLL, window, flags);
		result(r, errno);
		emit(", \"supported\": %d", ioctl(vm.fd, KVM_CHECK_EXTENSION, KVM_CAP_HALT_POLL));
		return;
	}
	get_i64(line, "value", &value);
	r = enable_cap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, value, flags);
	result(r, errno);
}

/*
 * "halt": the L2 sleeps on its local APIC timer once per duration; each
 * HLT halts in the kernel (the in-kernel irqchip), where halt polling runs.
 */
static void cmd_halt(const char *line)
{
	volatile uint32_t *mbox = (volatile uint32_t *)(vm.ctrl + MBOX_GPA);
	const uint32_t *res = (const uint32_t *)(vm.ctrl + RESULT_GPA);
	long n = get_list(line, "ns", list, MAX_HALTS);
	uint64_t total = 0;
	int khz;
	char msg[256];

	if (!vm.irqchip)
		return fail("no in-kernel irqchip: create with \"irqchip\": 1");
	if (n <= 0)
		return fail("\"ns\" must be a list of 1 to %d durations", MAX_HALTS);
	for (long i = 0; i < n; i++) {
		if (list[i] < 1 || list[i] > MAX_HALT_NS)
			return fail("a duration of %u ns: each must be 1..%lu", list[i], MAX_HALT_NS);
		total += list[i];
	}
	if (total > MAX_HALTS_NS)
		return fail("%" PRIu64 " ns of halts in one request: at most %llu", total, MAX_HALTS_NS);
	khz = ioctl(vm.vcpu, KVM_GET_TSC_KHZ, 0);
	if (khz <= 0) {
		result(-1, errno);
		return fail("KVM_GET_TSC_KHZ: %s", strerror(errno));
	}
	memcpy(vm.ctrl + LIST_GPA, list, n * 4);
	mbox[MBOX_OTHER_IRQS] = mbox[MBOX_SKIPPED] = 0;
	mbox[MBOX_CMD] = CMD_HALT;
	mbox[MBOX_COUNT] = n;
	if (run_vcpu(msg, sizeof(msg)))
		return fail("%s", msg);
	mbox[MBOX_CMD] = mbox[MBOX_COUNT] = 0;
	result(0, 0);
	emit(", \"tsc_khz\": %d, \"halts\": [", khz);
	for (long i = 0; i < n; i++) {
		uint64_t tsc = res[4 * i] | (uint64_t)res[4 * i + 1] << 32;

		emit("%s{\"ns\": %u, \"tsc\": %" PRIu64 ", \"l2_ns\": %" PRIu64 ", \"irqs\": %u, \"hlts\": %u}",
		     i ? ", " : "", list[i], tsc, (uint64_t)((unsigned __int128)tsc * 1000000 / khz),
		     res[4 * i + 2], res[4 * i + 3]);
	}
	emit("], \"other_irqs\": %u, \"skipped\": %u", mbox[MBOX_OTHER_IRQS], mbox[MBOX_SKIPPED]);
}

static void serve(const char *line)
{
	char op[32] = "";
	int64_t flags = 0;

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
		cmd_cap(line);
	} else if (!strcmp(op, "flags") && !vm.pages) {
		fail("no test slot: create with \"pages\" above 0");
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
		cmd_stats(line);
	} else if (!strcmp(op, "region")) {
		cmd_region(line);
	} else if (!strcmp(op, "load") || !strcmp(op, "store")) {
		cmd_access(line, !strcmp(op, "store"));
	} else if (!strcmp(op, "halt")) {
		cmd_halt(line);
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
		else if (!strcmp(argv[i], "--corrupt") && i + 1 < argc && !strcmp(argv[i + 1], "skip-delete"))
			corrupt = CORRUPT_SKIP_DELETE, i++;
		else {
			printf("{\"op\": \"\", \"error\": \"usage: minivmm [--corrupt skip-clear|flip-bit|skip-delete]\"}\n");
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
