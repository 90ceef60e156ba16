// SPDX-License-Identifier: GPL-2.0
/*
 * nh_probe: records every mmu_notifier callback on one process's mm.
 *
 * A root-only misc device.  NH_IOC_ATTACH registers an mmu_notifier (and,
 * on request, an interval notifier and an arch_invalidate_secondary_tlbs
 * notifier) on a pid's mm; each callback appends a fixed-size record to a
 * ring that read() drains.  A full ring counts drops and never overwrites:
 * the harness reports drops, nothing is lost silently.
 *
 * Callbacks run in atomic context (under page table locks, in the OOM
 * reaper), so the ring is a spinlock and an array allocated at attach; no
 * callback sleeps or allocates.
 *
 * NH_ATTACH_FAIL_NONBLOCK makes the primary notifier fail every
 * non-blockable start with -EAGAIN (the OOM reaper's path) from a second
 * ops table without invalidate_range_end, and adds a recording notifier
 * that it is called before;
 * NH_ATTACH_INTERVAL_FAIL does the same for the interval notifier.
 *
 * NH_IOC_GETPUT takes and drops references with mmu_notifier_get/put on the
 * attached mm through a third ops table (nh_gp_ops, with alloc_notifier and
 * free_notifier) and records those calls beside the callbacks (NH_SUB_GETPUT,
 * the subscription's id in sub_id).  Its subscriptions are static slots, never
 * freed memory, and the attachment keeps the mm grabbed: a put once too often
 * (NH_GP_OVERPUT) meets the kernel's WARN in mmu_notifier_put, not a
 * use-after-free.  free_notifier runs from an SRCU callback: it only records.
 *
 * Debug option `corrupt` (off by default) damages the stream on purpose so
 * the oracle can be shown to catch it: 1 drops the first invalidate_range_end
 * of the attached task, 2 shrinks the range of its first invalidate_range_start.
 */
#include <linux/fs.h>
#include <linux/jiffies.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pid.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/vmalloc.h>

#include "nh_probe.h"

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 6, 0)
#define NH_HAVE_INVALIDATE_RANGE 1	/* renamed arch_invalidate_secondary_tlbs in 6.6 */
#else
#define NH_HAVE_ARCH_INVALIDATE 1
#endif
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 10, 0)
#define NH_HAVE_CHANGE_PTE 1		/* removed in 6.10 */
#endif

enum nh_corrupt { NH_CORRUPT_NONE = 0, NH_CORRUPT_DROP_END = 1, NH_CORRUPT_SHRINK_RANGE = 2 };

static int corrupt;
module_param(corrupt, int, 0444);
MODULE_PARM_DESC(corrupt, "debug: 1 drops one invalidate_range_end, 2 shrinks one range (default 0: off)");

static unsigned int ring_records = 1 << 16;
module_param(ring_records, uint, 0444);
MODULE_PARM_DESC(ring_records, "ring capacity in records");

/* Read-only facts for the harness and the workloads. */
static int abi_version = NH_PROBE_ABI_VERSION;
module_param(abi_version, int, 0444);
static int record_size = sizeof(struct nh_record);
module_param(record_size, int, 0444);
static int attached_pid;	/* workloads poll this to start once attached */
module_param(attached_pid, int, 0444);

#define NH_ALL_CALLBACKS (((1u << NH_CB_COUNT) - 1) & ~1u)

/* A get/put subscription: one per alloc_notifier call, in a static slot (see above). */
struct nh_gp_sub {
	struct mmu_notifier mn;
	u32 id;			/* slot index + 1 */
	u32 refs;		/* references the module holds (st.lock) */
	bool freed;		/* free_notifier ran (WRITE_ONCE: it runs from an SRCU callback) */
};

static struct nh_state {
	struct mutex lock;		/* attach, detach, read */
	spinlock_t ring_lock;		/* the ring and its counters */
	struct nh_record *ring;
	u64 head, tail;			/* records written / read, ring index = n % ring_records */
	u64 seq, dropped;
	u32 mask;
	pid_t pid;
	bool recording;
	bool ever_attached;		/* read() before any ATTACH is an error, not an empty stream */
	bool corrupted;			/* the one corruption has been done */
	struct mm_struct *mm;		/* mmgrab()ed while attached */
	bool held;			/* mmget()ed with NH_ATTACH_HOLD_MM */
	struct mmu_notifier sub;
	bool sub_registered;
	struct mmu_notifier sub2;	/* the recorder of NH_ATTACH_FAIL_NONBLOCK */
	bool sub2_registered;
	bool interval_fail;
	struct mmu_interval_notifier isub;
	bool isub_inserted;
	struct mmu_notifier tlb_sub;
	bool tlb_registered;
	struct nh_gp_sub gp[NH_GP_MAX_SUBS];
	u32 gp_allocated;		/* slots handed out by alloc_notifier since ATTACH */
	struct nh_gp_sub *gp_last;	/* what the last successful get returned */
} st;

static void nh_record(u32 callback, u32 event, u64 start, u64 end, u32 flags, s32 ret, u32 subscriber,
		      u32 sub_id)
{
	struct nh_record *rec;
	unsigned long irqflags;

	if (!READ_ONCE(st.recording) || !(st.mask & (1u << callback)))
		return;
	if (corrupt && current->pid == st.pid) {
		/* Exactly once, and never marked: the oracle must find it alone. */
		if (corrupt == NH_CORRUPT_DROP_END && callback == NH_CB_END && !xchg(&st.corrupted, true))
			return;
		if (corrupt == NH_CORRUPT_SHRINK_RANGE && callback == NH_CB_START && end - start > PAGE_SIZE &&
		    !xchg(&st.corrupted, true))
			end -= PAGE_SIZE;
	}
	spin_lock_irqsave(&st.ring_lock, irqflags);
	if (st.head - st.tail >= ring_records) {
		st.dropped++;
		spin_unlock_irqrestore(&st.ring_lock, irqflags);
		return;
	}
	rec = &st.ring[st.head % ring_records];
	*rec = (struct nh_record) {
		.seq = ++st.seq,
		.time_ns = ktime_get_ns(),
		.start = start,
		.end = end,
		.callback = callback,
		.event = event,
		.flags = flags,
		.ret = ret,
		.cpu = raw_smp_processor_id(),
		.pid = current->pid,
		.subscriber = subscriber,
		.sub_id = sub_id,
	};
	st.head++;
	spin_unlock_irqrestore(&st.ring_lock, irqflags);
}

static u32 nh_range_flags(const struct mmu_notifier_range *range)
{
	return mmu_notifier_range_blockable(range) ? NH_REC_BLOCKABLE : 0;
}

static const struct mmu_notifier_ops nh_gp_ops;

static struct nh_gp_sub *nh_gp_of(struct mmu_notifier *sub)
{
	return sub->ops == &nh_gp_ops ? container_of(sub, struct nh_gp_sub, mn) : NULL;
}

static u32 nh_who(struct mmu_notifier *sub)
{
	if (nh_gp_of(sub))
		return NH_SUB_GETPUT;
	return sub == &st.sub2 ? NH_SUB_SECOND : NH_SUB_PRIMARY;
}

static u32 nh_sub_id(struct mmu_notifier *sub)
{
	struct nh_gp_sub *gp = nh_gp_of(sub);

	return gp ? gp->id : 0;
}

/* A callback of any mmu_notifier this module registered, as a record. */
static void nh_record_cb(struct mmu_notifier *sub, u32 callback, u32 event, u64 start, u64 end, u32 flags,
			 s32 ret)
{
	nh_record(callback, event, start, end, flags, ret, nh_who(sub), nh_sub_id(sub));
}

static int nh_invalidate_range_start(struct mmu_notifier *sub, const struct mmu_notifier_range *range)
{
	nh_record_cb(sub, NH_CB_START, range->event + 1, range->start, range->end, nh_range_flags(range), 0);
	return 0;
}

/* The failing notifier's start: -EAGAIN whenever it may not sleep. */
static int nh_failing_range_start(struct mmu_notifier *sub, const struct mmu_notifier_range *range)
{
	int ret = mmu_notifier_range_blockable(range) ? 0 : -EAGAIN;

	nh_record_cb(sub, NH_CB_START, range->event + 1, range->start, range->end,
		     nh_range_flags(range) | (ret ? NH_REC_FAILED : 0), ret);
	return ret;
}

static void nh_invalidate_range_end(struct mmu_notifier *sub, const struct mmu_notifier_range *range)
{
	nh_record_cb(sub, NH_CB_END, range->event + 1, range->start, range->end, nh_range_flags(range), 0);
}

#ifdef NH_HAVE_INVALIDATE_RANGE
static void nh_invalidate_range(struct mmu_notifier *sub, struct mm_struct *mm, unsigned long start,
				unsigned long end)
{
	nh_record_cb(sub, NH_CB_INVALIDATE_RANGE, NH_EV_UNSET, start, end, 0, 0);
}
#endif

#ifdef NH_HAVE_CHANGE_PTE
static void nh_change_pte(struct mmu_notifier *sub, struct mm_struct *mm, unsigned long address, pte_t pte)
{
	nh_record_cb(sub, NH_CB_CHANGE_PTE, NH_EV_UNSET, address, 0, 0, 0);
}
#endif

/* Young callbacks answer "not young": this probe maps nothing of its own. */
static int nh_clear_flush_young(struct mmu_notifier *sub, struct mm_struct *mm, unsigned long start,
				unsigned long end)
{
	nh_record_cb(sub, NH_CB_CLEAR_FLUSH_YOUNG, NH_EV_UNSET, start, end, 0, 0);
	return 0;
}

static int nh_clear_young(struct mmu_notifier *sub, struct mm_struct *mm, unsigned long start,
			  unsigned long end)
{
	nh_record_cb(sub, NH_CB_CLEAR_YOUNG, NH_EV_UNSET, start, end, 0, 0);
	return 0;
}

static int nh_test_young(struct mmu_notifier *sub, struct mm_struct *mm, unsigned long address)
{
	nh_record_cb(sub, NH_CB_TEST_YOUNG, NH_EV_UNSET, address, 0, 0, 0);
	return 0;
}

static void nh_release(struct mmu_notifier *sub, struct mm_struct *mm)
{
	nh_record_cb(sub, NH_CB_RELEASE, NH_EV_UNSET, 0, 0, 0, 0);
}

#ifdef NH_HAVE_INVALIDATE_RANGE
#define NH_OP_INVALIDATE_RANGE .invalidate_range = nh_invalidate_range,
#else
#define NH_OP_INVALIDATE_RANGE
#endif
#ifdef NH_HAVE_CHANGE_PTE
#define NH_OP_CHANGE_PTE .change_pte = nh_change_pte,
#else
#define NH_OP_CHANGE_PTE
#endif

/*
 * The callbacks every ops table of this module records the same way; the
 * tables differ only in start/end and get/put, so every subscriber sees the
 * same set of callbacks.
 */
#define NH_RECORDING_OPS					\
	NH_OP_INVALIDATE_RANGE					\
	NH_OP_CHANGE_PTE					\
	.clear_flush_young = nh_clear_flush_young,		\
	.clear_young = nh_clear_young,				\
	.test_young = nh_test_young,				\
	.release = nh_release

static const struct mmu_notifier_ops nh_ops = {
	.invalidate_range_start = nh_invalidate_range_start,
	.invalidate_range_end = nh_invalidate_range_end,
	NH_RECORDING_OPS,
};

/* No invalidate_range_end: the core WARNs when a failing notifier has one. */
static const struct mmu_notifier_ops nh_failing_ops = {
	.invalidate_range_start = nh_failing_range_start,
	NH_RECORDING_OPS,
};

/*
 * Called by mmu_notifier_get_locked() when no subscription with these ops is
 * on the mm, with the mm's mmap_lock held for writing, in NH_IOC_GETPUT's
 * context (st.lock held): a fresh slot, never one used since ATTACH.
 */
static struct mmu_notifier *nh_gp_alloc_notifier(struct mm_struct *mm)
{
	struct nh_gp_sub *gp;

	if (st.gp_allocated == NH_GP_MAX_SUBS)
		return ERR_PTR(-ENOSPC);
	gp = &st.gp[st.gp_allocated++];
	memset(&gp->mn, 0, sizeof(gp->mn));
	gp->id = st.gp_allocated;
	gp->refs = 0;
	WRITE_ONCE(gp->freed, false);
	nh_record(NH_CB_ALLOC_NOTIFIER, NH_EV_UNSET, 0, 0, 0, 0, NH_SUB_GETPUT, gp->id);
	return &gp->mn;
}

/* From an SRCU callback (mmu_notifier_free_rcu), which may not sleep: record, mark, nothing else. */
static void nh_gp_free_notifier(struct mmu_notifier *sub)
{
	struct nh_gp_sub *gp = container_of(sub, struct nh_gp_sub, mn);

	nh_record(NH_CB_FREE_NOTIFIER, NH_EV_UNSET, 0, 0, 0, 0, NH_SUB_GETPUT, gp->id);
	WRITE_ONCE(gp->freed, true);
}

/*
 * Its own table: mmu_notifier_get finds a subscription by its ops pointer, so
 * sharing nh_ops would take references on the primary notifier instead.
 */
static const struct mmu_notifier_ops nh_gp_ops = {
	.invalidate_range_start = nh_invalidate_range_start,
	.invalidate_range_end = nh_invalidate_range_end,
	NH_RECORDING_OPS,
	.alloc_notifier = nh_gp_alloc_notifier,
	.free_notifier = nh_gp_free_notifier,
};

#ifdef NH_HAVE_ARCH_INVALIDATE
/* A notifier of its own: combined with start/end, registration fails (-EINVAL). */
static void nh_arch_invalidate(struct mmu_notifier *sub, struct mm_struct *mm, unsigned long start,
			       unsigned long end)
{
	nh_record(NH_CB_ARCH_INVALIDATE, NH_EV_UNSET, start, end, 0, 0, NH_SUB_TLB, 0);
}

static const struct mmu_notifier_ops nh_tlb_ops = {
	.arch_invalidate_secondary_tlbs = nh_arch_invalidate,
};
#endif

static bool nh_interval_invalidate(struct mmu_interval_notifier *isub, const struct mmu_notifier_range *range,
				   unsigned long cur_seq)
{
	bool ok = !(READ_ONCE(st.interval_fail) && !mmu_notifier_range_blockable(range));

	nh_record(NH_CB_INTERVAL_INVALIDATE, range->event + 1, range->start, range->end,
		  nh_range_flags(range) | (ok ? 0 : NH_REC_FAILED), ok, NH_SUB_INTERVAL, 0);
	if (ok)
		mmu_interval_set_seq(isub, cur_seq);
	return ok;
}

static const struct mmu_interval_notifier_ops nh_interval_ops = {
	.invalidate = nh_interval_invalidate,
};

/* --- mmu_notifier_get/put (NH_IOC_GETPUT); the caller holds st.lock --- */

/* GET, PUT: `end` is the subscription's users count (after a get, before a put). */
static void nh_gp_record(u32 callback, s32 ret, struct nh_gp_sub *gp)
{
	nh_record(callback, NH_EV_UNSET, 0, gp ? READ_ONCE(gp->mn.users) : 0, 0, ret, NH_SUB_GETPUT,
		  gp ? gp->id : 0);
}

/* References the module holds, on every subscription. */
static u32 nh_gp_refs(void)
{
	u32 i, refs = 0;

	for (i = 0; i < st.gp_allocated; i++)
		refs += st.gp[i].refs;
	return refs;
}

/* Whom to put next: the subscription the last get returned while it has references, else any. */
static struct nh_gp_sub *nh_gp_held(void)
{
	u32 i;

	if (st.gp_last && st.gp_last->refs)
		return st.gp_last;
	for (i = 0; i < st.gp_allocated; i++)
		if (st.gp[i].refs)
			return &st.gp[i];
	return NULL;
}

static long nh_gp_get(u32 count, struct nh_gp_sub **touched)
{
	struct mmu_notifier *sub;
	struct nh_gp_sub *gp;
	u32 i;

	for (i = 0; i < count; i++) {
		/*
		 * __mmu_notifier_register BUG_ONs on an mm without users: pin it, as
		 * mmu_notifier_register's kernel-doc asks.  That fails once the last
		 * mmput has begun exit_mmap: the get is refused before the kernel.
		 */
		if (!mmget_not_zero(st.mm)) {
			nh_gp_record(NH_CB_GET, -ESRCH, NULL);
			return -ESRCH;
		}
		sub = mmu_notifier_get(&nh_gp_ops, st.mm);
		if (IS_ERR(sub)) {
			nh_gp_record(NH_CB_GET, PTR_ERR(sub), NULL);
			mmput(st.mm);
			return PTR_ERR(sub);
		}
		gp = container_of(sub, struct nh_gp_sub, mn);	/* found or allocated by nh_gp_ops */
		gp->refs++;
		st.gp_last = *touched = gp;
		/* Before the mmput: if it is the last, exit_mmap's release must follow the get. */
		nh_gp_record(NH_CB_GET, 0, gp);
		mmput(st.mm);
	}
	return 0;
}

static void nh_gp_put_one(struct nh_gp_sub *gp)
{
	/* Recorded first: the free_notifier that the last put queues must follow it in the stream. */
	nh_gp_record(NH_CB_PUT, 0, gp);
	if (gp->refs)
		gp->refs--;
	mmu_notifier_put(&gp->mn);
}

static long nh_gp_put(u32 count, struct nh_gp_sub **touched)
{
	u32 i;

	if (count > nh_gp_refs())
		return -EINVAL;
	for (i = 0; i < count; i++) {
		*touched = nh_gp_held();
		nh_gp_put_one(*touched);
	}
	return 0;
}

/*
 * The self-test: mmu_notifier_put with no reference left.  Safe here and only
 * here: the slot is static and ATTACH keeps the mm grabbed, so the kernel
 * finds users == 0 and WARNs instead of reading freed memory.
 */
static long nh_gp_overput(struct nh_gp_sub **touched)
{
	if (!st.gp_last)
		return -ENOENT;
	if (nh_gp_refs())
		return -EBUSY;	/* with references held it would be an ordinary put */
	pr_warn("nh_probe: putting get/put subscription %u once too often, on purpose\n", st.gp_last->id);
	*touched = st.gp_last;
	nh_gp_put_one(st.gp_last);
	return 0;
}

static void nh_gp_synchronize(void)
{
	mmu_notifier_synchronize();
	nh_gp_record(NH_CB_SYNCHRONIZE, 0, NULL);
}

/* Put whatever is still held and wait for every free_notifier (DETACH, module exit). */
static void nh_gp_end(void)
{
	struct nh_gp_sub *gp;

	while ((gp = nh_gp_held()))
		nh_gp_put_one(gp);
	if (st.gp_allocated)
		nh_gp_synchronize();
}

/* Every subscription handed out since ATTACH has been freed: the slots may be reused. */
static bool nh_gp_all_freed(void)
{
	u32 i;

	for (i = 0; i < st.gp_allocated; i++)
		if (!READ_ONCE(st.gp[i].freed))
			return false;
	return true;
}

/* Drop get_task_mm's reference if ATTACH kept it; when it is the last user, exit_mmap runs here. */
static bool nh_unhold(void)
{
	if (!st.held)
		return false;
	st.held = false;
	mmput(st.mm);
	return true;
}

static long nh_getput(struct nh_getput __user *uarg)
{
	struct nh_getput req;
	struct nh_gp_sub *touched = NULL;
	long ret;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.reserved)
		return -EINVAL;
	if ((req.op == NH_GP_GET || req.op == NH_GP_PUT) && (!req.count || req.count > NH_GP_MAX_COUNT))
		return -EINVAL;
	if (!st.mm)
		return -ENOENT;
	switch (req.op) {
	case NH_GP_GET:
		ret = nh_gp_get(req.count, &touched);
		break;
	case NH_GP_PUT:
		ret = nh_gp_put(req.count, &touched);
		break;
	case NH_GP_SYNC:
		nh_gp_synchronize();
		ret = 0;
		break;
	case NH_GP_UNHOLD:
		ret = nh_unhold() ? 0 : -ENOENT;
		break;
	case NH_GP_OVERPUT:
		ret = nh_gp_overput(&touched);
		break;
	default:
		return -EINVAL;
	}
	/* Out even on failure: a refused get still reports the references held. */
	req.sub_id = touched ? touched->id : 0;
	req.users = touched ? READ_ONCE(touched->mn.users) : 0;
	req.refs = nh_gp_refs();
	if (copy_to_user(uarg, &req, sizeof(req)))
		return -EFAULT;
	return ret;
}

/* Undo an attachment; the caller holds st.lock. */
static void nh_detach(void)
{
	struct mm_struct *mm = st.mm;

	if (!mm)
		return;
	/* The hold first: the notifiers see exit_mmap's release as a real exit would show it. */
	nh_unhold();
	nh_gp_end();
	if (st.isub_inserted) {
		mmu_interval_notifier_remove(&st.isub);
		st.isub_inserted = false;
	}
#ifdef NH_HAVE_ARCH_INVALIDATE
	if (st.tlb_registered) {
		mmu_notifier_unregister(&st.tlb_sub, mm);
		st.tlb_registered = false;
	}
#endif
	if (st.sub2_registered) {
		mmu_notifier_unregister(&st.sub2, mm);
		st.sub2_registered = false;
	}
	if (st.sub_registered) {
		mmu_notifier_unregister(&st.sub, mm);
		st.sub_registered = false;
	}
	WRITE_ONCE(st.recording, false);
	st.mm = NULL;
	st.pid = 0;
	WRITE_ONCE(attached_pid, 0);
	mmdrop(mm);
}

static long nh_attach(struct nh_attach __user *uarg)
{
	struct nh_attach req;
	struct task_struct *task;
	struct mm_struct *mm;
	unsigned long irqflags;
	int ret;

	if (copy_from_user(&req, uarg, sizeof(req)))
		return -EFAULT;
	if (req.abi_version != NH_PROBE_ABI_VERSION)
		return -EPROTO;
	if (req.flags & ~NH_ATTACH_ALL_FLAGS || req.record_mask & ~NH_ALL_CALLBACKS || !req.pid)
		return -EINVAL;
	if (req.flags & NH_ATTACH_INTERVAL_FAIL && !(req.flags & NH_ATTACH_INTERVAL))
		return -EINVAL;
	if (req.flags & NH_ATTACH_INTERVAL &&
	    (req.ival_start >= req.ival_end || !PAGE_ALIGNED(req.ival_start) || !PAGE_ALIGNED(req.ival_end)))
		return -EINVAL;
#ifndef NH_HAVE_ARCH_INVALIDATE
	if (req.flags & NH_ATTACH_TLB)
		return -EOPNOTSUPP;
#endif
	if (st.mm)
		return -EBUSY;
	if (!nh_gp_all_freed())
		return -EBUSY;	/* not after nh_gp_end's synchronize: cannot happen, but never reuse a live slot */

	task = get_pid_task(find_vpid(req.pid), PIDTYPE_PID);
	if (!task)
		return -ESRCH;
	mm = get_task_mm(task);	/* NULL for kernel threads and exiting tasks */
	put_task_struct(task);
	if (!mm)
		return -ESRCH;

	spin_lock_irqsave(&st.ring_lock, irqflags);
	st.head = st.tail = st.seq = st.dropped = 0;
	spin_unlock_irqrestore(&st.ring_lock, irqflags);
	st.mask = req.record_mask ? req.record_mask : NH_ALL_CALLBACKS;
	st.corrupted = false;
	st.ever_attached = true;
	st.pid = req.pid;
	mmgrab(mm);
	st.mm = mm;
	st.gp_allocated = 0;
	st.gp_last = NULL;
	WRITE_ONCE(st.recording, true);

	st.interval_fail = req.flags & NH_ATTACH_INTERVAL_FAIL;
	if (req.flags & NH_ATTACH_FAIL_NONBLOCK) {
		/*
		 * The recorder first: the failing notifier, registered last, is
		 * called first (hlist_add_head_rcu), so the trace shows the core
		 * calling the recorder's start after a failure, then its end.
		 */
		st.sub2.ops = &nh_ops;
		ret = mmu_notifier_register(&st.sub2, mm);
		if (ret)
			goto fail;
		st.sub2_registered = true;
	}
	st.sub.ops = req.flags & NH_ATTACH_FAIL_NONBLOCK ? &nh_failing_ops : &nh_ops;
	ret = mmu_notifier_register(&st.sub, mm);
	if (ret)
		goto fail;
	st.sub_registered = true;
	if (req.flags & NH_ATTACH_INTERVAL) {
		ret = mmu_interval_notifier_insert(&st.isub, mm, req.ival_start, req.ival_end - req.ival_start,
						   &nh_interval_ops);
		if (ret)
			goto fail;
		st.isub_inserted = true;
	}
#ifdef NH_HAVE_ARCH_INVALIDATE
	if (req.flags & NH_ATTACH_TLB) {
		st.tlb_sub.ops = &nh_tlb_ops;
		ret = mmu_notifier_register(&st.tlb_sub, mm);
		if (ret)
			goto fail;
		st.tlb_registered = true;
	}
#endif
	if (req.flags & NH_ATTACH_HOLD_MM)
		st.held = true;	/* keep get_task_mm's reference */
	else
		mmput(mm);
	mm = NULL;

	req.record_size = sizeof(struct nh_record);
	req.ring_records = ring_records;
	if (!(req.flags & NH_ATTACH_DEFER_START))
		WRITE_ONCE(attached_pid, req.pid);
	if (copy_to_user(uarg, &req, sizeof(req))) {
		nh_detach();
		return -EFAULT;
	}
	return 0;

fail:
	st.held = true;		/* nh_detach drops get_task_mm's reference */
	nh_detach();
	return ret;
}

static long nh_stats(struct nh_stats __user *uarg)
{
	struct nh_stats out = { 0 };
	unsigned long irqflags;

	spin_lock_irqsave(&st.ring_lock, irqflags);
	out.written = st.head;
	out.dropped = st.dropped;
	out.read = st.tail;
	spin_unlock_irqrestore(&st.ring_lock, irqflags);
	out.attached_pid = st.pid;
	return copy_to_user(uarg, &out, sizeof(out)) ? -EFAULT : 0;
}

static noinline void nh_debug_oops(void)
{
	*(volatile int *)NULL = 1;
}

/* Outside st.lock: a fault must not leave the probe's mutex held, but for the one that is meant to. */
static long nh_debug(struct nh_debug __user *uarg)
{
	struct nh_debug d;
	unsigned long until;

	if (copy_from_user(&d, uarg, sizeof(d)))
		return -EFAULT;
	switch (d.op) {
	case NH_DEBUG_WARN:
		WARN(1, "nh_probe: warning requested through NH_IOC_DEBUG");
		return 0;
	case NH_DEBUG_OOPS:
		nh_debug_oops();
		return 0;
	case NH_DEBUG_OOPS_LOCKED:
		mutex_lock(&st.lock);
		nh_debug_oops();
		mutex_unlock(&st.lock);	/* not reached: the Oops ends the task with the mutex held */
		return 0;
	case NH_DEBUG_SPIN:
		until = jiffies + d.seconds * HZ;
		preempt_disable();
		while (time_before(jiffies, until))
			cpu_relax();
		preempt_enable();
		return 0;
	case NH_DEBUG_SLEEP:
		schedule_timeout_uninterruptible(d.seconds * HZ);
		return 0;
	}
	return -EINVAL;
}

static long nh_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	long ret;

	if (cmd == NH_IOC_DEBUG)
		return nh_debug((struct nh_debug __user *)arg);
	mutex_lock(&st.lock);
	switch (cmd) {
	case NH_IOC_ATTACH:
		ret = nh_attach((struct nh_attach __user *)arg);
		break;
	case NH_IOC_DETACH:
		ret = st.mm ? 0 : -ENOENT;
		nh_detach();
		break;
	case NH_IOC_STATS:
		ret = nh_stats((struct nh_stats __user *)arg);
		break;
	case NH_IOC_START:
		ret = st.mm ? 0 : -ENOENT;
		if (st.mm)
			WRITE_ONCE(attached_pid, st.pid);
		break;
	case NH_IOC_GETPUT:
		ret = nh_getput((struct nh_getput __user *)arg);
		break;
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&st.lock);
	return ret;
}

/* Drain whole records; 0 when the ring is empty (never blocks), -ENOENT before any ATTACH. */
static ssize_t nh_read(struct file *file, char __user *buf, size_t count, loff_t *ppos)
{
	enum { BATCH = 64 };
	struct nh_record *bounce;
	unsigned long irqflags;
	size_t done = 0;
	bool faulted = false;

	if (count % sizeof(struct nh_record))
		return -EINVAL;
	bounce = kmalloc_array(BATCH, sizeof(*bounce), GFP_KERNEL);
	if (!bounce)
		return -ENOMEM;
	mutex_lock(&st.lock);
	if (!st.ever_attached) {
		mutex_unlock(&st.lock);
		kfree(bounce);
		return -ENOENT;
	}
	while (done < count) {
		size_t n = 0, want = min_t(size_t, BATCH, (count - done) / sizeof(*bounce));

		spin_lock_irqsave(&st.ring_lock, irqflags);
		while (n < want && st.tail < st.head)
			bounce[n++] = st.ring[st.tail++ % ring_records];
		spin_unlock_irqrestore(&st.ring_lock, irqflags);
		if (!n)
			break;
		if (copy_to_user(buf + done, bounce, n * sizeof(*bounce))) {
			/* Those records are consumed and lost: fail the read rather than pretend. */
			done = 0;
			faulted = true;
			break;
		}
		done += n * sizeof(*bounce);
	}
	mutex_unlock(&st.lock);
	kfree(bounce);
	return faulted ? -EFAULT : (ssize_t)done;
}

static int nh_open(struct inode *inode, struct file *file)
{
	return capable(CAP_SYS_ADMIN) ? 0 : -EPERM;
}

static const struct file_operations nh_fops = {
	.owner = THIS_MODULE,
	.open = nh_open,
	.read = nh_read,
	.unlocked_ioctl = nh_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice nh_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "nh_probe",
	.fops = &nh_fops,
	.mode = 0600,
};

static int __init nh_init(void)
{
	int ret;

	BUILD_BUG_ON(sizeof(struct nh_record) != 64);
	BUILD_BUG_ON(MMU_NOTIFY_UNMAP + 1 != NH_EV_UNMAP || MMU_NOTIFY_EXCLUSIVE + 1 != NH_EV_EXCLUSIVE);
	if (!ring_records || corrupt < NH_CORRUPT_NONE || corrupt > NH_CORRUPT_SHRINK_RANGE)
		return -EINVAL;
	mutex_init(&st.lock);
	spin_lock_init(&st.ring_lock);
	st.ring = vzalloc(array_size(ring_records, sizeof(struct nh_record)));
	if (!st.ring)
		return -ENOMEM;
	ret = misc_register(&nh_misc);
	if (ret)
		vfree(st.ring);
	else if (corrupt)
		pr_warn("nh_probe: corrupt=%d: this module damages its own event stream on purpose\n", corrupt);
	return ret;
}

static void __exit nh_exit(void)
{
	misc_deregister(&nh_misc);
	mutex_lock(&st.lock);
	nh_detach();
	mutex_unlock(&st.lock);
	/* Every free_notifier queued by a put must have run before this module's text goes. */
	mmu_notifier_synchronize();
	vfree(st.ring);
}

module_init(nh_init);
module_exit(nh_exit);
MODULE_LICENSE("GPL");	/* the mmu_notifier API is EXPORT_SYMBOL_GPL */
MODULE_DESCRIPTION("notifier-harness probe: records mmu_notifier callbacks on one mm");
