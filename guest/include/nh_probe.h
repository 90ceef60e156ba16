/* SPDX-License-Identifier: GPL-2.0 */
/*
 * nh_probe: the private uapi between the notifier-harness probe module and
 * its userspace (nhctl, the workloads, and the Python parser in
 * harness/events.py, which states this layout once and is checked against
 * this header by a unit test).  Not an exported kernel uapi: it lives with
 * the module, as lib/test_hmm_uapi.h does with test_hmm.
 *
 * Every enum reserves 0 as "unset" so a zeroed record is recognisably empty.
 */
#ifndef NH_PROBE_H
#define NH_PROBE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define NH_PROBE_ABI_VERSION	2
#define NH_PROBE_DEVICE		"/dev/nh_probe"

/* Which callback produced a record. */
enum nh_callback {
	NH_CB_UNSET = 0,
	NH_CB_START = 1,		/* invalidate_range_start */
	NH_CB_END = 2,			/* invalidate_range_end */
	NH_CB_INVALIDATE_RANGE = 3,	/* invalidate_range (<= 6.5) */
	NH_CB_ARCH_INVALIDATE = 4,	/* arch_invalidate_secondary_tlbs (>= 6.6) */
	NH_CB_CLEAR_FLUSH_YOUNG = 5,
	NH_CB_CLEAR_YOUNG = 6,
	NH_CB_TEST_YOUNG = 7,
	NH_CB_CHANGE_PTE = 8,		/* change_pte (<= 6.9) */
	NH_CB_RELEASE = 9,
	NH_CB_INTERVAL_INVALIDATE = 10,	/* mmu_interval_notifier_ops.invalidate */
	/* The get/put subscription's lifetime (NH_SUB_GETPUT; sub_id names the subscription). */
	NH_CB_ALLOC_NOTIFIER = 11,	/* ops->alloc_notifier: sub_id is the new subscription's */
	NH_CB_FREE_NOTIFIER = 12,	/* ops->free_notifier (an SRCU callback after the last put) */
	/*
	 * Calls the module made, not callbacks, in the same stream so that their
	 * order against the callbacks is exact.  GET: recorded after
	 * mmu_notifier_get returned; ret 0 or -errno, end the subscription's users
	 * count after it.  PUT: recorded before mmu_notifier_put is called (so a
	 * free_notifier can only follow it), end the users count before it.
	 * SYNCHRONIZE: recorded after mmu_notifier_synchronize returned.
	 */
	NH_CB_GET = 13,
	NH_CB_PUT = 14,
	NH_CB_SYNCHRONIZE = 15,
	NH_CB_COUNT
};

/* enum mmu_notifier_event + 1, so that 0 stays "unset". */
enum nh_event {
	NH_EV_UNSET = 0,
	NH_EV_UNMAP = 1,
	NH_EV_CLEAR = 2,
	NH_EV_PROTECTION_VMA = 3,
	NH_EV_PROTECTION_PAGE = 4,
	NH_EV_SOFT_DIRTY = 5,
	NH_EV_RELEASE = 6,
	NH_EV_MIGRATE = 7,
	NH_EV_EXCLUSIVE = 8,
};

/* nh_record.flags */
#define NH_REC_BLOCKABLE	(1u << 0)	/* range flags had MMU_NOTIFIER_RANGE_BLOCKABLE */
#define NH_REC_FAILED		(1u << 1)	/* the callback returned an error */

/* nh_record.subscriber */
enum nh_subscriber {
	NH_SUB_UNSET = 0,
	NH_SUB_PRIMARY = 1,		/* the mmu_notifier ATTACH registered */
	NH_SUB_INTERVAL = 2,		/* the interval notifier of NH_ATTACH_INTERVAL */
	NH_SUB_TLB = 3,			/* the arch_invalidate_secondary_tlbs-only notifier */
	NH_SUB_SECOND = 4,		/* the recording notifier NH_ATTACH_FAIL_NONBLOCK adds */
	NH_SUB_GETPUT = 5,		/* a subscription of NH_IOC_GETPUT (mmu_notifier_get); sub_id says which */
};

/* One callback, as read() returns it.  64 bytes, no implicit padding. */
struct nh_record {
	__u64 seq;		/* (out) 1, 2, 3, ... in the order callbacks ran */
	__u64 time_ns;		/* (out) ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 start;		/* (out) range start, or the address of test_young/change_pte */
	__u64 end;		/* (out) range end (exclusive); 0 for single-address callbacks */
	__u32 callback;		/* (out) enum nh_callback */
	__u32 event;		/* (out) enum nh_event; NH_EV_UNSET where the callback has none */
	__u32 flags;		/* (out) NH_REC_* */
	__s32 ret;		/* (out) what the callback returned (young: 0/1; start: 0/-errno) */
	__u32 cpu;		/* (out) raw_smp_processor_id() */
	__u32 pid;		/* (out) current->pid: the task that caused the callback */
	__u32 subscriber;	/* (out) enum nh_subscriber */
	__u32 sub_id;		/* (out) NH_SUB_GETPUT: the subscription's id (1, 2, ... per ATTACH, in
				 *       alloc_notifier order); 0 for every other subscriber */
};

/* nh_attach.flags */
#define NH_ATTACH_HOLD_MM	(1u << 0)	/* mmget() the mm until DETACH (exit_mmap waits) */
#define NH_ATTACH_INTERVAL	(1u << 1)	/* also insert an interval notifier over [ival_start, ival_end) */
#define NH_ATTACH_TLB		(1u << 2)	/* also register an arch_invalidate_secondary_tlbs notifier (>= 6.6) */
/*
 * The primary notifier returns -EAGAIN from every non-blockable start and,
 * as a notifier that can fail must, has no invalidate_range_end (a second
 * ops table).  A second notifier that records everything is registered
 * before it, so it is called after the failing one: its start shows that
 * every subscriber is still called, its end shows the unwind.
 */
#define NH_ATTACH_FAIL_NONBLOCK	(1u << 3)
/* The interval notifier returns false from every non-blockable invalidate. */
#define NH_ATTACH_INTERVAL_FAIL	(1u << 4)
/*
 * attached_pid (the module parameter the workloads wait for) is published by
 * NH_IOC_START, not by ATTACH: the caller does something first (takes
 * get/put references) and then lets the workload go.
 */
#define NH_ATTACH_DEFER_START	(1u << 5)
#define NH_ATTACH_ALL_FLAGS	(NH_ATTACH_HOLD_MM | NH_ATTACH_INTERVAL | NH_ATTACH_TLB | \
				 NH_ATTACH_FAIL_NONBLOCK | NH_ATTACH_INTERVAL_FAIL | NH_ATTACH_DEFER_START)

struct nh_attach {
	__u32 abi_version;	/* (in) NH_PROBE_ABI_VERSION */
	__u32 pid;		/* (in) process whose mm to watch */
	__u32 record_mask;	/* (in) bit (1 << enum nh_callback) per callback to record; 0 = all */
	__u32 flags;		/* (in) NH_ATTACH_* */
	__u64 ival_start;	/* (in) interval notifier range, with NH_ATTACH_INTERVAL */
	__u64 ival_end;		/* (in) exclusive */
	__u32 record_size;	/* (out) sizeof(struct nh_record) in the module */
	__u32 ring_records;	/* (out) ring capacity in records */
};

struct nh_stats {
	__u64 written;		/* (out) records appended to the ring since ATTACH */
	__u64 dropped;		/* (out) records lost because the ring was full */
	__u64 read;		/* (out) records returned by read() */
	__u32 attached_pid;	/* (out) 0 when detached */
	__u32 reserved;		/* (out) 0 */
};

/*
 * Faults for the harness's own tests (crash, warning and hang handling); no
 * effect on attach state.  SPIN busy-waits with preemption off (soft lockup,
 * RCU stall); SLEEP sleeps uninterruptibly (hung task); OOPS_LOCKED Oopses
 * holding the probe's mutex, so every later attach, detach or read waits
 * forever: a kernel wedged by an Oops, as a real bug leaves it.
 */
enum nh_debug_op {
	NH_DEBUG_WARN = 1,	/* WARN() once */
	NH_DEBUG_OOPS = 2,	/* a NULL pointer write: Oops, the calling task dies */
	NH_DEBUG_SPIN = 3,	/* spin for `seconds` with preemption disabled */
	NH_DEBUG_SLEEP = 4,	/* TASK_UNINTERRUPTIBLE for `seconds` */
	NH_DEBUG_OOPS_LOCKED = 5,	/* OOPS with the probe's mutex held */
};

struct nh_debug {
	__u32 op;		/* (in) enum nh_debug_op */
	__u32 seconds;		/* (in) SPIN and SLEEP */
};

/*
 * mmu_notifier_get/put on the attached mm, with an ops table of its own
 * (alloc_notifier/free_notifier; the subscriptions live in static slots, so a
 * put once too often meets the kernel's WARN, never freed memory).  Every
 * call and the subscription's callbacks are recorded (NH_SUB_GETPUT).
 * DETACH puts every reference still held and calls mmu_notifier_synchronize.
 */
enum nh_getput_op {
	NH_GP_GET = 1,		/* `count` x mmu_notifier_get; -ESRCH once the mm has no users (its exit began) */
	NH_GP_PUT = 2,		/* `count` x mmu_notifier_put; -EINVAL if the module holds fewer references */
	NH_GP_SYNC = 3,		/* mmu_notifier_synchronize() */
	NH_GP_UNHOLD = 4,	/* drop NH_ATTACH_HOLD_MM's mmget now (exit_mmap runs if the task is gone) */
	NH_GP_OVERPUT = 5,	/* debug: one mmu_notifier_put when the module holds no reference */
};

#define NH_GP_MAX_COUNT		64	/* references per GET or PUT */
#define NH_GP_MAX_SUBS		8	/* alloc_notifier calls per ATTACH */

struct nh_getput {
	__u32 op;		/* (in) enum nh_getput_op */
	__u32 count;		/* (in) GET, PUT: 1..NH_GP_MAX_COUNT */
	__u32 sub_id;		/* (out) GET: the subscription the last get returned; PUT, OVERPUT: the one put */
	__u32 users;		/* (out) GET, PUT, OVERPUT: that subscription's users count afterwards */
	__u32 refs;		/* (out) references the module holds now, on every subscription */
	__u32 reserved;		/* (in) 0 */
};

#define NH_IOC_ATTACH	_IOWR('N', 0x01, struct nh_attach)
#define NH_IOC_DETACH	_IO('N', 0x02)
#define NH_IOC_STATS	_IOR('N', 0x03, struct nh_stats)
#define NH_IOC_DEBUG	_IOW('N', 0x04, struct nh_debug)
#define NH_IOC_START	_IO('N', 0x05)	/* publish attached_pid (after NH_ATTACH_DEFER_START) */
#define NH_IOC_GETPUT	_IOWR('N', 0x06, struct nh_getput)

#endif /* NH_PROBE_H */
