// SPDX-License-Identifier: GPL-2.0
/*
 * nhctl: drive the nh_probe module from the guest.
 *
 *   nhctl attach PID [options]      attach and print the module's answer as JSON
 *   nhctl detach
 *   nhctl stats                     written/dropped/read counters as JSON
 *   nhctl read                      drain the ring: raw struct nh_record to stdout
 *   nhctl debug warn|oops|spin|sleep|oops-locked [SECONDS]
 *                                   inject a kernel fault (the harness's crash handling tests)
 *   nhctl run --events FILE [options] -- PROGRAM ARGS...
 *       start PROGRAM, attach to it (PROGRAM waits for that), wait for it to
 *       exit, detach, drain the ring into FILE, print the counters as a final
 *       JSON line.  PROGRAM's stdout passes through.
 *   nhctl getput --events FILE [--hold] STEP... -- PROGRAM ARGS...
 *       start PROGRAM and attach to it without letting it go, then run the
 *       steps in order, one JSON line each: get:N, put:N (mmu_notifier_get/put
 *       N times), sync (mmu_notifier_synchronize), run (let PROGRAM go and wait
 *       for it to exit; exactly once), unhold (drop --hold's pin on the mm),
 *       overput (one put too many: the self-test).  A step that fails is
 *       reported and the next one runs.  Then detach, drain, counters as in run.
 *
 * options: --hold (mmget until detach)  --interval START END  --tlb
 *          --fail-nonblock (-EAGAIN from non-blockable starts, plus a recording notifier)
 *          --interval-fail (the interval notifier fails non-blockable invalidates)
 * run only: --cgroup DIR (the workload joins DIR before exec)
 *           --linger-ms N (keep the attachment N ms after the workload exited)
 *          --mask CALLBACK[,CALLBACK...] (start,end,invalidate_range,arch_invalidate,
 *          clear_flush_young,clear_young,test_young,change_pte,release,interval)
 *
 * Errors are one JSON line {"error": "..."} on stdout and exit status 2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nh_probe.h"

static const char *const callback_names[NH_CB_COUNT] = {
	[NH_CB_START] = "start", [NH_CB_END] = "end", [NH_CB_INVALIDATE_RANGE] = "invalidate_range",
	[NH_CB_ARCH_INVALIDATE] = "arch_invalidate", [NH_CB_CLEAR_FLUSH_YOUNG] = "clear_flush_young",
	[NH_CB_CLEAR_YOUNG] = "clear_young", [NH_CB_TEST_YOUNG] = "test_young",
	[NH_CB_CHANGE_PTE] = "change_pte", [NH_CB_RELEASE] = "release",
	[NH_CB_INTERVAL_INVALIDATE] = "interval", [NH_CB_ALLOC_NOTIFIER] = "alloc_notifier",
	[NH_CB_FREE_NOTIFIER] = "free_notifier", [NH_CB_GET] = "get", [NH_CB_PUT] = "put",
	[NH_CB_SYNCHRONIZE] = "synchronize",
};

static void die(const char *what, int err)
{
	printf("{\"error\": \"%s: %s\"}\n", what, err ? strerror(err) : "invalid");
	fflush(stdout);
	exit(2);
}

static int open_probe(void)
{
	int fd = open(NH_PROBE_DEVICE, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		die("open " NH_PROBE_DEVICE " (is nh_probe loaded?)", errno);
	return fd;
}

static uint32_t parse_mask(char *list)
{
	uint32_t mask = 0;

	for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
		int i;

		for (i = 1; i < NH_CB_COUNT; i++)
			if (!strcmp(tok, callback_names[i]))
				break;
		if (i == NH_CB_COUNT)
			die("unknown callback in --mask", 0);
		mask |= 1u << i;
	}
	return mask;
}

/* Parse attach options from argv[*i]; stops at "--" or a non-option. */
struct run_options {
	const char *events;
	const char *cgroup;
	long linger_ms;
};

static void parse_options(int argc, char **argv, int *i, struct nh_attach *req, struct run_options *run)
{
	for (; *i < argc; (*i)++) {
		const char *a = argv[*i];

		if (!strcmp(a, "--hold")) {
			req->flags |= NH_ATTACH_HOLD_MM;
		} else if (!strcmp(a, "--tlb")) {
			req->flags |= NH_ATTACH_TLB;
		} else if (!strcmp(a, "--fail-nonblock")) {
			req->flags |= NH_ATTACH_FAIL_NONBLOCK;
		} else if (!strcmp(a, "--interval-fail")) {
			req->flags |= NH_ATTACH_INTERVAL_FAIL;
		} else if (!strcmp(a, "--interval") && *i + 2 < argc) {
			req->flags |= NH_ATTACH_INTERVAL;
			req->ival_start = strtoull(argv[++*i], NULL, 0);
			req->ival_end = strtoull(argv[++*i], NULL, 0);
		} else if (!strcmp(a, "--mask") && *i + 1 < argc) {
			req->record_mask = parse_mask(argv[++*i]);
		} else if (!strcmp(a, "--events") && run && *i + 1 < argc) {
			run->events = argv[++*i];
		} else if (!strcmp(a, "--cgroup") && run && *i + 1 < argc) {
			run->cgroup = argv[++*i];
		} else if (!strcmp(a, "--linger-ms") && run && *i + 1 < argc) {
			run->linger_ms = strtol(argv[++*i], NULL, 0);
		} else if (!strcmp(a, "--")) {
			(*i)++;
			return;
		} else {
			die("unknown option", 0);
		}
	}
}

static void attach(int fd, struct nh_attach *req)
{
	req->abi_version = NH_PROBE_ABI_VERSION;
	if (ioctl(fd, NH_IOC_ATTACH, req))
		die("NH_IOC_ATTACH", errno);
}

static void print_stats(int fd, const char *extra)
{
	struct nh_stats s;

	if (ioctl(fd, NH_IOC_STATS, &s))
		die("NH_IOC_STATS", errno);
	printf("{\"op\": \"probe-stats\", \"written\": %" PRIu64 ", \"dropped\": %" PRIu64 ", \"read\": %" PRIu64
	       ", \"attached_pid\": %u%s}\n", (uint64_t)s.written, (uint64_t)s.dropped, (uint64_t)s.read,
	       s.attached_pid, extra ? extra : "");
	fflush(stdout);
}

/* Copy every record in the ring to out_fd; returns how many. */
static uint64_t drain(int fd, int out_fd)
{
	static struct nh_record buf[256];
	uint64_t total = 0;
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(out_fd, (char *)buf + off, n - off);

			if (w < 0)
				die("write events", errno);
			off += w;
		}
		total += n / sizeof(struct nh_record);
	}
	if (n < 0)
		die("read " NH_PROBE_DEVICE, errno);
	return total;
}

static int join_cgroup(const char *dir)
{
	char path[512], pid[32];
	int fd, len, ok;

	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	len = snprintf(pid, sizeof(pid), "%d", getpid());
	ok = write(fd, pid, len) == len;
	close(fd);
	return ok ? 0 : -1;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/*
 * The exec pipe's EOF says the workload's exec closed it, and the kernel closes close-on-exec
 * files only after installing the new mm (begin_new_exec: exec_mmap, then do_close_on_exec).
 * Attaching to the mm before that would watch the copy of nhctl that exec then releases: a run
 * with no fork, no COW and a release before the workload's exit.  So check it as well: until
 * exec_mmap, /proc/PID/exe is nhctl's own file; from then on the program's (or, for a script,
 * its interpreter's).  Returns the microseconds waited for that after the EOF (0: no wait),
 * which the stats line carries; a workload already gone is left to the attach to report, and a
 * workload that is nhctl itself cannot be told apart, so it is not waited for.
 */
static uint64_t await_exec(pid_t child, const char *program, ssize_t got, int read_errno)
{
	struct stat self, now;
	char exe[64];
	uint64_t start = now_us();
	unsigned long tries;

	if (stat("/proc/self/exe", &self))
		die("stat /proc/self/exe", errno);
	if (!stat(program, &now) && now.st_dev == self.st_dev && now.st_ino == self.st_ino)
		return 0;
	snprintf(exe, sizeof(exe), "/proc/%d/exe", (int)child);
	for (tries = 0;; tries++) {
		if (stat(exe, &now))
			return 0;
		if (now.st_dev != self.st_dev || now.st_ino != self.st_ino)
			break;
		if (now_us() - start > 10000000) {
			kill(child, SIGKILL);
			waitpid(child, NULL, 0);
			die("the workload had not exec'd 10 s after its exec pipe said so", 0);
		}
		usleep(100);
	}
	if (!tries)
		return 0;
	fprintf(stderr, "nhctl: exec pipe read returned %zd (errno %d) before %s had exec'd\n",
		got, read_errno, program);
	return now_us() - start;
}

/* Start argv[0] (joining `cgroup` first, if given); returns once it has exec'd, with the
 * microseconds it took to see that after the exec pipe's EOF in *late_us. */
static pid_t spawn(int fd, char **argv, const char *cgroup, uint64_t *late_us)
{
	ssize_t got;
	int status, read_errno, execpipe[2], err = 0;
	pid_t child;

	fflush(stdout);
	/*
	 * exec replaces the mm, so attach only after it: the pipe's write end is
	 * close-on-exec, and EOF on the read end means exec succeeded.
	 */
	if (pipe2(execpipe, O_CLOEXEC))
		die("pipe2", errno);
	child = fork();
	if (child < 0)
		die("fork", errno);
	if (child == 0) {
		close(fd);
		if (cgroup && join_cgroup(cgroup)) {
			err = errno;
			if (write(execpipe[1], &err, sizeof(err)) < 0)
				_exit(126);
			_exit(125);
		}
		execv(argv[0], argv);
		err = errno;
		if (write(execpipe[1], &err, sizeof(err)) < 0)
			_exit(126);
		_exit(127);
	}
	close(execpipe[1]);
	got = read(execpipe[0], &err, sizeof(err));
	read_errno = got < 0 ? errno : 0;
	if (got > 0) {
		waitpid(child, &status, 0);
		die(WIFEXITED(status) && WEXITSTATUS(status) == 125 ? "join cgroup" : "exec workload", err);
	}
	close(execpipe[0]);
	*late_us = await_exec(child, argv[0], got, read_errno);
	return child;
}

/* Attach to the workload just spawned; a failure kills it. */
static void attach_child(int fd, struct nh_attach *req, pid_t child)
{
	req->pid = child;
	req->abi_version = NH_PROBE_ABI_VERSION;
	if (ioctl(fd, NH_IOC_ATTACH, req)) {
		int err = errno;

		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		die("NH_IOC_ATTACH", err);
	}
}

/* Detach (with --hold, exit_mmap runs now), drain into `events`, print the counters and how it ended. */
static void finish(int fd, const char *events, pid_t child, int status, uint32_t record_size, uint64_t late_us)
{
	char extra[256];
	int out;

	if (ioctl(fd, NH_IOC_DETACH))
		die("NH_IOC_DETACH", errno);
	out = open(events, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out < 0)
		die("open events file", errno);
	drain(fd, out);
	close(out);
	snprintf(extra, sizeof(extra), ", \"pid\": %d, \"exit_status\": %d, \"signal\": %d, \"record_size\": %u"
		 ", \"exec_late_us\": %" PRIu64,
		 child, WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0,
		 record_size, late_us);
	print_stats(fd, extra);
}

static int cmd_run(int fd, int argc, char **argv, int i)
{
	struct nh_attach req = { 0 };
	struct run_options run = { 0 };
	int status;
	uint64_t late_us;
	pid_t child;

	parse_options(argc, argv, &i, &req, &run);
	if (!run.events || i >= argc)
		die("usage: nhctl run --events FILE [options] -- PROGRAM ARGS", 0);
	child = spawn(fd, &argv[i], run.cgroup, &late_us);
	attach_child(fd, &req, child);
	if (waitpid(child, &status, 0) < 0)
		die("waitpid", errno);
	/* With --hold the mm outlives the task: give the OOM reaper its time. */
	if (run.linger_ms > 0)
		usleep(run.linger_ms * 1000);
	finish(fd, run.events, child, status, req.record_size, late_us);
	return 0;
}

/* getput's steps; `count` only for get and put. */
enum gp_step { GP_GET, GP_PUT, GP_SYNC, GP_RUN, GP_UNHOLD, GP_OVERPUT };
static const char *const gp_step_names[] = { "get", "put", "sync", "run", "unhold", "overput" };
#define GP_MAX_STEPS 64

struct step {
	enum gp_step kind;
	unsigned int count;
};

static struct step parse_step(const char *word)
{
	struct step st = { 0 };
	const char *colon = strchr(word, ':');
	size_t len = colon ? (size_t)(colon - word) : strlen(word);
	char *end;
	unsigned int k;

	for (k = 0; k < sizeof(gp_step_names) / sizeof(gp_step_names[0]); k++)
		if (strlen(gp_step_names[k]) == len && !strncmp(word, gp_step_names[k], len))
			break;
	if (k == sizeof(gp_step_names) / sizeof(gp_step_names[0]))
		die("unknown getput step (get:N put:N sync run unhold overput)", 0);
	st.kind = k;
	if (st.kind == GP_GET || st.kind == GP_PUT) {
		unsigned long n = colon ? strtoul(colon + 1, &end, 10) : 0;

		if (!colon || *end || n < 1 || n > NH_GP_MAX_COUNT)
			die("get:N and put:N take a count of 1..64", 0);
		st.count = n;
	} else if (colon) {
		die("only get and put take a count", 0);
	}
	return st;
}

/* One step; its JSON line carries the ioctl's answer (ret -1 and errno when it failed). */
static void do_step(int fd, struct step st, pid_t child, int *status)
{
	static const uint32_t ops[] = { [GP_GET] = NH_GP_GET, [GP_PUT] = NH_GP_PUT, [GP_SYNC] = NH_GP_SYNC,
					[GP_UNHOLD] = NH_GP_UNHOLD, [GP_OVERPUT] = NH_GP_OVERPUT };
	struct nh_getput gp = { 0 };
	int ret, err;

	if (st.kind == GP_RUN) {
		if (ioctl(fd, NH_IOC_START))
			die("NH_IOC_START", errno);
		if (waitpid(child, status, 0) < 0)
			die("waitpid", errno);
		ret = 0;
		err = 0;
	} else {
		gp.op = ops[st.kind];
		gp.count = st.count;
		ret = ioctl(fd, NH_IOC_GETPUT, &gp);
		err = ret ? errno : 0;
	}
	printf("{\"op\": \"gp-step\", \"step\": \"%s\", \"count\": %u, \"ret\": %d, \"errno\": %d, "
	       "\"sub_id\": %u, \"users\": %u, \"refs\": %u}\n", gp_step_names[st.kind], st.count, ret, err,
	       gp.sub_id, gp.users, gp.refs);
	fflush(stdout);
}

static int cmd_getput(int fd, int argc, char **argv, int i)
{
	struct nh_attach req = { .flags = NH_ATTACH_DEFER_START };
	struct step steps[GP_MAX_STEPS];
	const char *events = NULL;
	int nsteps = 0, runs = 0, status = 0;
	uint64_t late_us;
	pid_t child;

	for (; i < argc && strcmp(argv[i], "--"); i++) {
		if (!strcmp(argv[i], "--events") && i + 1 < argc)
			events = argv[++i];
		else if (!strcmp(argv[i], "--hold"))
			req.flags |= NH_ATTACH_HOLD_MM;
		else if (nsteps == GP_MAX_STEPS)
			die("too many getput steps", 0);
		else
			steps[nsteps++] = parse_step(argv[i]);
	}
	for (int k = 0; k < nsteps; k++)
		runs += steps[k].kind == GP_RUN;
	if (!events || i + 1 >= argc || runs != 1)
		die("usage: nhctl getput --events FILE [--hold] STEP... (exactly one run) -- PROGRAM ARGS", 0);
	child = spawn(fd, &argv[i + 1], NULL, &late_us);
	attach_child(fd, &req, child);
	for (int k = 0; k < nsteps; k++)
		do_step(fd, steps[k], child, &status);
	finish(fd, events, child, status, req.record_size, late_us);
	return 0;
}

int main(int argc, char **argv)
{
	struct nh_attach req = { 0 };
	int fd, i = 2;

	if (argc < 2)
		die("usage: nhctl attach|detach|stats|read|run|getput|debug ...", 0);
	fd = open_probe();
	if (!strcmp(argv[1], "attach") && argc >= 3) {
		req.pid = atoi(argv[2]);
		i = 3;
		parse_options(argc, argv, &i, &req, NULL);
		attach(fd, &req);
		printf("{\"attached\": %u, \"record_size\": %u, \"ring_records\": %u}\n", req.pid, req.record_size,
		       req.ring_records);
	} else if (!strcmp(argv[1], "detach")) {
		if (ioctl(fd, NH_IOC_DETACH))
			die("NH_IOC_DETACH", errno);
	} else if (!strcmp(argv[1], "stats")) {
		print_stats(fd, NULL);
	} else if (!strcmp(argv[1], "read")) {
		drain(fd, STDOUT_FILENO);
	} else if (!strcmp(argv[1], "run")) {
		return cmd_run(fd, argc, argv, i);
	} else if (!strcmp(argv[1], "getput")) {
		return cmd_getput(fd, argc, argv, i);
	} else if (!strcmp(argv[1], "debug") && argc >= 3) {
		static const char *ops[] = { "", "warn", "oops", "spin", "sleep", "oops-locked" };
		struct nh_debug d = { 0 };

		for (unsigned int op = 1; op < sizeof(ops) / sizeof(ops[0]); op++)
			if (!strcmp(argv[2], ops[op]))
				d.op = op;
		d.seconds = argc > 3 ? atoi(argv[3]) : 0;
		if (!d.op)
			die("usage: nhctl debug warn|oops|spin|sleep|oops-locked [SECONDS]", 0);
		if (ioctl(fd, NH_IOC_DEBUG, &d))
			die("NH_IOC_DEBUG", errno);
	} else {
		die("usage: nhctl attach|detach|stats|read|run ...", 0);
	}
	return 0;
}
