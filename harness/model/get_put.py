"""mmu_notifier_get / mmu_notifier_put (docs/get-put.md), judged on the probe's stream.

The stream holds the probe's get/put calls (GET, PUT, SYNCHRONIZE), the
subscription's alloc_notifier and free_notifier, and every callback of the
get/put ops with the subscription's id; beside them, the callbacks of the
reference notifier (Subscriber.PRIMARY, registered with mmu_notifier_register
before the first get and unregistered after the last put).  The reference
notifier's release is the mm's exit: exit_mmap -> mn_hlist_release calls
every subscriber's release, in list order, in one pass.

Rules (the name each finding carries):
  gp-get        a get that finds no subscription on the list (none referenced)
                calls alloc_notifier once and returns that new subscription
                with users 1 (mmu_notifier_get_locked); a get while one is
                referenced calls none and returns it, users one higher
                (find_get_mmu_notifier): N gets, one subscription.  A get does
                not fail on an mm that is alive; one whose registration failed
                has freed what alloc_notifier gave it (free_notifier at once)
  gp-refused    a get after the mm's exit began fails and calls no
                alloc_notifier (__mmu_notifier_register needs mm_users > 0,
                which mmget_not_zero() refuses from exit_mmap on)
  gp-identity   every get/put callback, put and free_notifier names a
                subscription alloc_notifier made, and none comes after its
                free_notifier
  gp-once       while a subscription is on the mm's list, each call the
                reference notifier gets, the subscription gets exactly once,
                just before it on the same task (it is newer on the hlist, so
                called first): an event is delivered once, not once per
                reference.  A core call may make a group of calls per
                subscriber (6.1's mn_hlist_invalidate_end: invalidate_range,
                then invalidate_range_end), so the unit is the group: the
                subscription's run of calls, then the same run for the
                reference notifier
  gp-put        a put drops a reference a get took: with none left,
                mmu_notifier_put WARNs (users == 0); the users count the kernel
                shows is gets minus puts
  gp-free       free_notifier exactly once per subscription, after the put of
                its last reference (mmu_notifier_free_rcu, queued by that put),
                never while it is referenced
  gp-synchronize
                free_notifier has run by the time the first
                mmu_notifier_synchronize() after that put returns
  gp-release    release exactly once when the mm exits while the subscription
                is on the list (after the get that registered it, before the
                put of its last reference), in the exit's release pass, before
                the reference notifier's; never otherwise (mmu_notifier_put
                never calls release); nothing but free_notifier after it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from harness.events import GETPUT_CALLS, Callback, Record, Subscriber
from harness.model.findings import Finding, window_around

REFERENCE = Subscriber.PRIMARY


@dataclass
class Subscription:
    """One subscription as the stream shows it, from its alloc_notifier on."""

    id: int
    alloc: Record
    registered: Optional[Record] = None    # the get that returned it first
    refs: int = 0                          # gets minus puts so far
    last_put: Optional[Record] = None      # the put of its last reference
    release: Optional[Record] = None
    free: Optional[Record] = None
    failed_get: bool = False               # its get's registration failed: freed at once

    def on_list_at(self, seq: int, exit_seq: Optional[int]) -> bool:
        """Whether the mm's notifier list held it when record `seq` was made: from the get that
        registered it until the put of its last reference, or through the exit's release pass."""
        if self.registered is None or seq <= self.registered.seq:
            return False
        if self.last_put is not None and seq >= self.last_put.seq:
            return False
        return exit_seq is None or seq <= exit_seq


@dataclass
class GetPutJudgement:
    findings: list[Finding]
    subscriptions: list[Subscription]
    exit: Optional[Record]                 # the reference notifier's release


def _is_gp_callback(r: Record) -> bool:
    return r.subscriber == Subscriber.GETPUT and r.callback not in GETPUT_CALLS


class _Walk:
    """The stream in order, with what the rules need to know at each record."""

    def __init__(self, records: Sequence[Record]):
        self.records = records
        self.findings: list[Finding] = []
        self.subs: dict[int, Subscription] = {}
        self.live: Optional[Subscription] = None      # the referenced one: what a get must return
        self.pending: Optional[Subscription] = None   # allocated, its get not yet recorded
        self.exit: Optional[Record] = None

    def add(self, rule: str, message: str, rec: Optional[Record], expected: str = "") -> None:
        self.findings.append(Finding(rule=rule, message=message, expected=expected,
                                     observed=rec.describe() if rec else "",
                                     window=window_around(self.records, rec.seq) if rec else ()))

    def known(self, rec: Record, what: str) -> Optional[Subscription]:
        sub = self.subs.get(rec.sub_id)
        if sub is None:
            self.add("gp-identity", f"{what} of subscription #{rec.sub_id}, which alloc_notifier never made", rec)
        elif sub.free is not None:
            self.add("gp-identity", f"{what} of subscription #{sub.id} after its free_notifier "
                                    f"(#{sub.free.seq})", rec, expected="nothing after free_notifier")
            return None
        return sub

    def run(self) -> None:
        handlers = {Callback.ALLOC_NOTIFIER: self.on_alloc, Callback.GET: self.on_get, Callback.PUT: self.on_put,
                    Callback.FREE_NOTIFIER: self.on_free}
        for rec in self.records:
            if rec.callback in handlers:
                handlers[rec.callback](rec)
            elif rec.callback == Callback.RELEASE and rec.subscriber == REFERENCE:
                self.on_exit(rec)
            elif _is_gp_callback(rec):
                self.on_callback(rec)
        self.check_frees()

    def on_alloc(self, rec: Record) -> None:
        if rec.sub_id in self.subs:
            self.add("gp-identity", f"alloc_notifier made a second subscription #{rec.sub_id}", rec)
            return
        sub = Subscription(id=rec.sub_id, alloc=rec)
        self.subs[rec.sub_id] = sub
        if self.exit is not None:
            self.add("gp-refused", f"alloc_notifier (#{sub.id}) after the mm's exit (#{self.exit.seq})", rec,
                     expected="no alloc_notifier: the get is refused")
        elif self.live is not None:
            self.add("gp-get", f"alloc_notifier (#{sub.id}) while subscription #{self.live.id} holds "
                               f"{self.live.refs} references: find_get_mmu_notifier must return it", rec,
                     expected=f"a get returning #{self.live.id}")
        self.pending = sub

    def on_get(self, rec: Record) -> None:
        pending, self.pending = self.pending, None
        if self.exit is not None:
            if rec.ret != 0:
                return
            # Followed as any other get, so that its puts are judged as puts of a reference.
            self.add("gp-refused", f"a get succeeded after the mm's exit (#{self.exit.seq}): "
                                   f"__mmu_notifier_register needs mm_users > 0", rec,
                     expected="refused (mmget_not_zero fails)")
        elif rec.ret != 0:
            self.on_failed_get(rec, pending)
            return
        sub = self.known(rec, "a get")
        if sub is None:
            return
        if self.live is None:
            if pending is None or pending.id != sub.id:
                self.add("gp-get", f"a get with no referenced subscription returned #{sub.id} without "
                                   f"calling alloc_notifier for it", rec, expected="alloc_notifier, then that one")
            if sub.registered is not None:
                self.add("gp-get", f"a get returned #{sub.id} again after the put of its last reference: that "
                                   f"put took it off the mm's list", rec, expected="a new subscription")
            else:
                sub.registered = rec
            self.live = sub
        elif sub is not self.live:
            self.add("gp-get", f"a get returned #{sub.id} while #{self.live.id} is referenced: one subscription "
                               f"per (ops, mm)", rec, expected=f"#{self.live.id}")
            return
        sub.refs += 1
        if rec.users != sub.refs:
            self.add("gp-get", f"users is {rec.users} after this get of #{sub.id}, but it has had {sub.refs} "
                               f"more gets than puts", rec, expected=f"users {sub.refs}")

    def on_failed_get(self, rec: Record, pending: Optional[Subscription]) -> None:
        if pending is not None:
            pending.failed_get = True
            if pending.free is None:
                self.add("gp-get", f"a get failed ({rec.ret}) after alloc_notifier made #{pending.id}, which was "
                                   f"not freed: mmu_notifier_get_locked calls free_notifier at once", rec)
        self.add("gp-get", f"a get failed with {rec.ret} on an mm that has not exited", rec,
                 expected="the subscription, with one more reference")

    def on_put(self, rec: Record) -> None:
        sub = self.subs.get(rec.sub_id)
        if sub is not None and sub.refs == 0:
            # Checked before the identity rule: the put once too often is what happened, whether or
            # not free_notifier already ran.
            freed = f", after its free_notifier (#{sub.free.seq})" if sub.free else ""
            self.add("gp-put", f"a put of #{sub.id} with no reference left (every get was already put{freed}): "
                               f"mmu_notifier_put WARNs on users == 0", rec,
                     expected=f"as many puts as gets of #{sub.id}")
            return
        sub = self.known(rec, "a put")
        if sub is None:
            return
        if rec.users != sub.refs:
            self.add("gp-put", f"users is {rec.users} before this put of #{sub.id}, but it has had {sub.refs} "
                               f"more gets than puts", rec, expected=f"users {sub.refs}")
        sub.refs -= 1
        if sub.refs == 0:
            sub.last_put = rec
            if self.live is sub:
                self.live = None

    def on_free(self, rec: Record) -> None:
        sub = self.subs.get(rec.sub_id)
        if sub is None:
            self.add("gp-identity", f"free_notifier of subscription #{rec.sub_id}, which alloc_notifier never made",
                     rec)
            return
        if sub.free is not None:
            self.add("gp-free", f"free_notifier of #{sub.id} again (first #{sub.free.seq})", rec,
                     expected="exactly once")
            return
        sub.free = rec
        if sub is self.pending:
            return   # mmu_notifier_get_locked's out_free: registration failed, its get will say so
        if sub.refs:
            self.add("gp-free", f"free_notifier of #{sub.id} while it holds {sub.refs} references", rec,
                     expected="after the put of its last reference")
        elif sub.last_put is None:
            self.add("gp-free", f"free_notifier of #{sub.id}, which was never put", rec,
                     expected="after the put of its last reference")

    def on_exit(self, rec: Record) -> None:
        if self.exit is not None:
            return   # the contract rules judge a second release of the reference notifier
        self.exit = rec
        live = self.live
        if live is not None and live.release is None:
            self.add("gp-release", f"the mm exited (#{rec.seq}) while #{live.id} held {live.refs} references, "
                                   f"but its release never came in the exit's release pass", rec,
                     expected=f"release of #{live.id} before the reference notifier's")

    def on_callback(self, rec: Record) -> None:
        sub = self.known(rec, rec.callback.name.lower())
        if sub is None:
            return
        if rec.callback != Callback.RELEASE:
            if sub.release is not None:
                self.add("gp-release", f"{rec.callback.name.lower()} of #{sub.id} after its release "
                                       f"(#{sub.release.seq}): exit_mmap unlinked it", rec,
                         expected="nothing but free_notifier after release")
            return
        if sub.release is not None:
            self.add("gp-release", f"release of #{sub.id} again (first #{sub.release.seq})", rec,
                     expected="exactly once")
            return
        sub.release = rec
        if self.live is not sub:
            self.add("gp-release", f"release of #{sub.id}, which holds no reference: mmu_notifier_put never "
                                   f"calls release, and only the mm's exit does", rec, expected="no release")
        elif self.exit is not None:
            self.add("gp-release", f"release of #{sub.id} after the exit's release pass (#{self.exit.seq})", rec)

    def check_frees(self) -> None:
        syncs = [r for r in self.records if r.callback == Callback.SYNCHRONIZE]
        for sub in self.subs.values():
            if sub.release is not None and (self.exit is None or self.exit.seq < sub.release.seq):
                self.add("gp-release", f"release of #{sub.id} (#{sub.release.seq}) with no exit of the mm: the "
                                       f"reference notifier got no release after it", sub.release)
            if sub.last_put is None:
                continue
            sync = next((s for s in syncs if s.seq > sub.last_put.seq), None)
            if sync is not None and (sub.free is None or sub.free.seq > sync.seq):
                self.add("gp-synchronize", f"mmu_notifier_synchronize() returned (#{sync.seq}) before "
                                           f"free_notifier of #{sub.id}, whose last put was #{sub.last_put.seq}",
                         sync, expected=f"free_notifier of #{sub.id} before #{sync.seq}")


def _twin(gp: Record, ref: Record) -> bool:
    """The same callback of the same invalidation, as the two subscribers saw it."""
    return (gp.callback, gp.event, gp.start, gp.end, gp.blockable) == \
        (ref.callback, ref.event, ref.start, ref.end, ref.blockable)


def _runs(stream: Sequence[Record]) -> list[list[Record]]:
    """A task's calls cut into runs of one subscriber each (the get/put subscription or the reference)."""
    runs: list[list[Record]] = []
    for r in stream:
        if runs and _is_gp_callback(runs[-1][0]) == _is_gp_callback(r):
            runs[-1].append(r)
        else:
            runs.append([r])
    return runs


def _check_once(walk: _Walk) -> None:
    """gp-once, per task: each run of get/put calls is followed by the same run of the reference
    notifier; each reference call while a subscription is on the list belongs to such a pair."""
    exit_seq = walk.exit.seq if walk.exit else None
    streams: dict[int, list[Record]] = {}
    for r in walk.records:
        if (r.subscriber == REFERENCE and r.callback not in GETPUT_CALLS) or _is_gp_callback(r):
            streams.setdefault(r.pid, []).append(r)
    for stream in streams.values():
        runs = _runs(stream)
        paired: set[int] = set()     # seqs of reference calls that have their twin
        for k, run in enumerate(runs):
            if not _is_gp_callback(run[0]):
                continue
            ref = runs[k + 1] if k + 1 < len(runs) else []
            if len(ref) >= len(run) and all(_twin(g, r) for g, r in zip(run, ref)):
                paired.update(r.seq for r in ref[:len(run)])
                continue
            walk.add("gp-once", f"{'; '.join(g.describe() for g in run)}: the reference notifier's next calls "
                                f"on this task are not the same ({'; '.join(r.describe() for r in ref[:len(run)]) or 'none'})",
                     run[0], expected="each call delivered once to each subscriber, the newest first")
            paired.update(r.seq for r in ref[:len(run)])   # judged with this run already
        for r in stream:
            if _is_gp_callback(r) or r.seq in paired:
                continue
            on_list = [sub.id for sub in walk.subs.values() if sub.on_list_at(r.seq, exit_seq)]
            if on_list:
                walk.add("gp-once", f"the reference notifier's {r.describe()} has no twin from subscription "
                                    f"#{on_list[0]}, which is on the mm's list", r,
                         expected=f"the same call of #{on_list[0]} just before it")


def judge_get_put(records: Sequence[Record]) -> GetPutJudgement:
    walk = _Walk(records)
    walk.run()
    _check_once(walk)
    return GetPutJudgement(findings=walk.findings, subscriptions=list(walk.subs.values()), exit=walk.exit)
