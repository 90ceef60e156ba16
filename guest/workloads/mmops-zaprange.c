// SPDX-License-Identifier: GPL-2.0
/*
 * mmops' zap family: the kernel zapping a range of the workload's own mm on its behalf, outside
 * any madvise or munmap.
 *
 *   timens          unshare(CLONE_NEWTIME), then setns() into the new time namespace through
 *                   /proc/self/ns/time_for_children: joining it zaps the [vvar] VMA (the vDSO's
 *                   data pages are then faulted back from the namespace's).  Reports the [vvar]
 *                   range, and whether CLOCK_MONOTONIC still runs forward through the vDSO.
 *   tcpzc:LEN:BYTES a loopback TCP connection; BYTES sent, then getsockopt(TCP_ZEROCOPY_RECEIVE)
 *                   into a LEN-byte mapping of the receiving socket, which zaps the part it is
 *                   about to map first.  Reports the mapping as start/end, the bytes queued
 *                   then (inq: all, or what the receive window let through), the length asked, what was mapped and the copy hint; then checks every
 *                   byte received (mapped, or read with recv): bad_pages counts the stream's
 *                   4 KiB pieces holding a wrong byte.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mmops.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME	0x00000080
#endif
#define MAX_BYTES	(256 << 10)

static unsigned char payload[MAX_BYTES], received[MAX_BYTES];

/* The [vvar] VMA from /proc/self/maps, or fail. */
static void find_vvar(uintptr_t *start, uintptr_t *end)
{
	if (read_file("/proc/self/maps") < 0)
		fail("timens", "read /proc/self/maps", errno);
	for (char *p = scratch; p && *p; p = next_line(p)) {
		unsigned long s, e;
		char *nl = strchr(p, '\n');

		if (sscanf(p, "%lx-%lx ", &s, &e) == 2 && strstr(p, "[vvar]") && (!nl || strstr(p, "[vvar]") < nl)) {
			*start = s;
			*end = e;
			return;
		}
	}
	fail("timens", "no [vvar] mapping", 0);
}

static void op_timens(char **f, int n)
{
	uintptr_t start, end;
	uint64_t t0, t1, after;
	int fd;

	(void)f;
	(void)n;
	if (unshare(CLONE_NEWTIME))
		fail("timens", "unshare(CLONE_NEWTIME)", errno);
	fd = open("/proc/self/ns/time_for_children", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("timens", "open /proc/self/ns/time_for_children", errno);
	find_vvar(&start, &end);
	t0 = now_ns();
	if (setns(fd, CLONE_NEWTIME))
		fail("timens", "setns(CLONE_NEWTIME)", errno);
	t1 = now_ns();
	close(fd);
	after = now_ns();	/* through the vDSO, from the vvar page faulted back */
	printf("{\"op\": \"timens\", \"start\": %lu, \"end\": %lu, \"clock_ok\": %d, \"t0\": %" PRIu64 ", \"t1\": %"
	       PRIu64 "}\n", (unsigned long)start, (unsigned long)end, after >= t1, t0, t1);
}

/* A connected loopback pair: *tx sends, *rx receives. */
static void loopback_pair(int *tx, int *rx)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(addr);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 1) ||
	    getsockname(lfd, (struct sockaddr *)&addr, &len))
		fail("tcpzc", "listening on loopback", errno);
	*tx = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*tx < 0 || connect(*tx, (struct sockaddr *)&addr, sizeof(addr)))
		fail("tcpzc", "connect", errno);
	*rx = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (*rx < 0)
		fail("tcpzc", "accept", errno);
	close(lfd);
}

static void op_tcpzc(char **f, int n)
{
	struct tcp_zerocopy_receive zc;
	socklen_t zc_len = sizeof(zc);
	size_t len, bytes, got, sent = 0;
	uint64_t t0, t1, deadline;
	long bad = 0;		/* 4 KiB pieces of the stream holding a wrong byte */
	int tx, rx, inq = 0;
	unsigned char *map;

	if (n < 3)
		fail("tcpzc", "usage tcpzc:LEN:BYTES", 0);
	len = parse_size("tcpzc", f[1]);
	bytes = parse_size("tcpzc", f[2]);
	if (!len || len % PAGE || !bytes || bytes > MAX_BYTES)
		fail("tcpzc", "LEN must be a page multiple, BYTES 1..256K", 0);
	for (size_t i = 0; i < bytes; i++)
		payload[i] = (unsigned char)(i * 7 + i / PAGE + 1);
	loopback_pair(&tx, &rx);
	map = mmap(NULL, len, PROT_READ, MAP_SHARED, rx, 0);
	if (map == MAP_FAILED)
		fail("tcpzc", "mmap of the socket", errno);
	while (sent < bytes) {
		ssize_t w = send(tx, payload + sent, bytes - sent, 0);

		if (w <= 0)
			fail("tcpzc", "send", errno);
		sent += w;
	}
	/* Queued before the call, so that what it zaps is known: everything sent, or as much as the
	 * receive window let through (nothing more arrives until the receiver reads). */
	deadline = now_ns() + 5000000000ULL;
	for (int last = -1, stable = 0; stable < 50 && now_ns() < deadline; usleep(1000)) {
		if (ioctl(rx, SIOCINQ, &inq))
			fail("tcpzc", "ioctl(SIOCINQ)", errno);
		stable = inq == last ? stable + 1 : 0;
		last = inq;
		if ((size_t)inq == bytes)
			break;
	}
	memset(&zc, 0, sizeof(zc));
	zc.address = (uintptr_t)map;
	zc.length = len;
	t0 = now_ns();
	if (getsockopt(rx, IPPROTO_TCP, TCP_ZEROCOPY_RECEIVE, &zc, &zc_len))
		fail("tcpzc", "getsockopt(TCP_ZEROCOPY_RECEIVE)", errno);
	t1 = now_ns();
	/* What was mapped, then the rest by copy. */
	got = zc.length;
	if (got > bytes)
		fail("tcpzc", "TCP_ZEROCOPY_RECEIVE mapped more than was sent", 0);
	memcpy(received, map, got);
	while (got < bytes) {
		ssize_t r = recv(rx, received + got, bytes - got, 0);

		if (r <= 0)
			fail("tcpzc", "recv", errno);
		got += r;
	}
	for (size_t i = 0; i < bytes; i += PAGE)
		bad += memcmp(received + i, payload + i, bytes - i < PAGE ? bytes - i : PAGE) != 0;
	printf("{\"op\": \"tcpzc\", \"start\": %lu, \"end\": %lu, \"inq\": %d, \"length\": %zu, \"mapped\": %u, "
	       "\"skip\": %u, \"zc_err\": %d, \"bad_pages\": %ld, \"t0\": %" PRIu64 ", \"t1\": %" PRIu64 "}\n",
	       (unsigned long)map, (unsigned long)map + len, inq, len, zc.length, zc.recv_skip_hint, zc.err, bad, t0,
	       t1);
	close(tx);
	close(rx);
}

static const struct mmops_op zaprange_ops[] = { { "timens", op_timens }, { "tcpzc", op_tcpzc }, { NULL, NULL } };

MMOPS_FAMILY(zaprange) = { .ops = zaprange_ops };
