/* libFuzzer target: everything that reads bytes another client (or anyone
 * with write access to the share) controls -- a sidecar's content -- and
 * the kernel's /proc/locks listing. */
#include "../../src/core/log.h"
#include "../../src/core/proclocks.h"
#include "../../src/core/sidecar.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sidecar_info info;
	sidecar_parse((const char *)data, size, &info);
	if (info.ours_format && strlen(info.host_id) >= sizeof info.host_id)
		abort();

	char *text = malloc(size + 1);
	memcpy(text, data, size);
	text[size] = '\0';
	struct proclocks locks;
	if (proclocks_parse(text, &locks) == 0) {
		size_t n;
		const struct proclock *on = proclocks_on(&locks, makedev(0, 0x1b), 42, &n);
		for (size_t i = 0; i < n; i++)
			if (on[i].dev != makedev(0, 0x1b) || on[i].ino != 42)
				abort();
		proclocks_free(&locks);
	}
	free(text);
	return 0;
}
