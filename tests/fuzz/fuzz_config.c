/* libFuzzer target: the configuration a user gives, as environment
 * variables: one value per input line, in the order of `vars` below. */
#include "../../src/core/config.h"
#include "../../src/core/log.h"
#include "../../src/core/timeutil.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const vars[] = {
	"UUIDLOCK_VERIFY_DELAY", "UUIDLOCK_RETRY_INTERVAL", "UUIDLOCK_TIMEOUT", "UUIDLOCK_LEASE",
	"UUIDLOCK_FOREIGN_STALE", "UUIDLOCK_PREFIX", "UUIDLOCK_SUFFIX", "UUIDLOCK_LOG",
	"UUIDLOCK_RUNTIME_DIR", "UUIDLOCK_PATHS",
};

/* Every accepted number of seconds is bounded: no "now + value" overflows. */
static bool timings_bounded(const struct config *c)
{
	const int64_t day = CONFIG_SECONDS_MAX * NS_PER_SEC, week = CONFIG_LEASE_SECONDS_MAX * NS_PER_SEC;
	return c->verify_delay_ns <= day && c->retry_interval_ns <= day && c->timeout_ns <= day &&
	       c->lease_ns <= week && c->foreign_stale_ns <= week;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int quiet = -1;
	if (quiet < 0) {
		quiet = open("/dev/null", O_WRONLY);
		log_set_fd(quiet);
	}
	char *text = malloc(size + 1);
	memcpy(text, data, size);
	text[size] = '\0';

	int64_t ns;
	if (parse_seconds(text, &ns) && strchr(text, '\n') == NULL && text[0] != '-' && ns < 0)
		abort(); /* a number without '-' can't come out negative */

	char *rest = text;
	for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
		char *value = strsep(&rest, "\n");
		if (value == NULL)
			unsetenv(vars[i]);
		else
			setenv(vars[i], value, 1);
	}
	static struct config c;
	memset(&c, 0, sizeof c);
	config_load(&c);
	config_resolve_dirs(&c);
	if (c.ndirs > CONFIG_MAX_DIRS || (!c.invalid && (c.verify_delay_ns < 0 || c.retry_interval_ns <= 0 || !timings_bounded(&c))))
		abort();
	free(text);
	return 0;
}
