// SPDX-License-Identifier: GPL-2.0
/* A user's test program for the workload scenario: a few mm operations, no knowledge of the probe. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	size_t len = 64 << 12;
	int rounds = argc > 1 ? atoi(argv[1]) : 3;
	char *p;

	for (int i = 0; i < rounds; i++) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return 1;
		memset(p, i + 1, len);
		if (mprotect(p + (8 << 12), 8 << 12, PROT_READ) || madvise(p, 16 << 12, MADV_DONTNEED) ||
		    munmap(p + (32 << 12), 8 << 12) || munmap(p, len))
			return 2;
	}
	printf("%d rounds\n", rounds);
	return 0;
}
