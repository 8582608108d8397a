/* A library whose constructor locks a file (named by EARLY_LOCK_FILE) before
 * the shim's own constructor may have run: the shim must already work. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

__attribute__((constructor)) static void lock_early(void)
{
	const char *path = getenv("EARLY_LOCK_FILE");
	if (path == NULL)
		return;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	int r = fd < 0 ? -1 : flock(fd, LOCK_EX | LOCK_NB);
	fprintf(stderr, "early lock %s\n", r == 0 ? "ok" : "failed");
	/* keep fd open: the lock lasts as long as the process */
}
