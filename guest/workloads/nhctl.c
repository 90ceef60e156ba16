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
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nh_probe.h"

static const char *const callback_names[NH_CB_COUNT] = {
	[NH_CB_START] = "start", [NH_CB_END] = "end", [NH_CB_INVALIDATE_RANGE] = "invalidate_range",
	[NH_CB_ARCH_INVALIDATE] = "arch_invalidate", [NH_CB_CLEAR_FLUSH_YOUNG] = "clear_flush_young",
	[NH_CB_CLEAR_YOUNG] = "clear_young", [NH_CB_TEST_YOUNG] = "test_young",
	[NH_CB_CHANGE_PTE] = "change_pte", [NH_CB_RELEASE] = "release",
	[NH_CB_INTERVAL_INVALIDATE] = "interval",
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

static int cmd_run(int fd, int argc, char **argv, int i)
{
	struct nh_attach req = { 0 };
	struct run_options run = { 0 };
	char extra[256];
	int status, out, execpipe[2], err = 0;
	pid_t child;

	parse_options(argc, argv, &i, &req, &run);
	if (!run.events || i >= argc)
		die("usage: nhctl run --events FILE [options] -- PROGRAM ARGS", 0);
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
		if (run.cgroup && join_cgroup(run.cgroup)) {
			err = errno;
			if (write(execpipe[1], &err, sizeof(err)) < 0)
				_exit(126);
			_exit(125);
		}
		execv(argv[i], &argv[i]);
		err = errno;
		if (write(execpipe[1], &err, sizeof(err)) < 0)
			_exit(126);
		_exit(127);
	}
	close(execpipe[1]);
	if (read(execpipe[0], &err, sizeof(err)) > 0) {
		waitpid(child, &status, 0);
		die(WIFEXITED(status) && WEXITSTATUS(status) == 125 ? "join cgroup" : "exec workload", err);
	}
	close(execpipe[0]);
	req.pid = child;
	req.abi_version = NH_PROBE_ABI_VERSION;
	if (ioctl(fd, NH_IOC_ATTACH, &req)) {
		int err = errno;

		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		die("NH_IOC_ATTACH", err);
	}
	if (waitpid(child, &status, 0) < 0)
		die("waitpid", errno);
	/* With --hold the mm outlives the task: give the OOM reaper its time. */
	if (run.linger_ms > 0)
		usleep(run.linger_ms * 1000);
	/* Detach before draining: with --hold, exit_mmap (and release) runs now. */
	if (ioctl(fd, NH_IOC_DETACH))
		die("NH_IOC_DETACH", errno);
	out = open(run.events, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out < 0)
		die("open events file", errno);
	drain(fd, out);
	close(out);
	snprintf(extra, sizeof(extra), ", \"pid\": %d, \"exit_status\": %d, \"signal\": %d, \"record_size\": %u",
		 child, WIFEXITED(status) ? WEXITSTATUS(status) : -1, WIFSIGNALED(status) ? WTERMSIG(status) : 0,
		 req.record_size);
	print_stats(fd, extra);
	return 0;
}

int main(int argc, char **argv)
{
	struct nh_attach req = { 0 };
	int fd, i = 2;

	if (argc < 2)
		die("usage: nhctl attach|detach|stats|read|run|debug ...", 0);
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
