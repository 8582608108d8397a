#include "log.h"

#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static enum log_level current_level = LOG_WARN;
static int log_fd = STDERR_FILENO;
static const char *log_file;

static const char *const level_names[] = { "off", "error", "warn", "info", "debug" };

int log_level_parse(const char *s)
{
	for (unsigned i = 0; i < sizeof level_names / sizeof level_names[0]; i++)
		if (strcmp(s, level_names[i]) == 0)
			return (int)i;
	return -1;
}

void log_set_level(enum log_level level) { current_level = level; }
void log_set_fd(int fd) { log_fd = fd; }
void log_set_file(const char *path) { log_file = path; }
int log_enabled(enum log_level level) { return level != LOG_OFF && level <= current_level; }

void log_msg(enum log_level level, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;
	int saved_errno = errno;
	char line[1024];
	int n = snprintf(line, sizeof line, "uuidlock: ");
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	size_t len = (size_t)n + ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m : sizeof line - (size_t)n - 2);
	line[len++] = '\n';
	int fd = log_file ? open(log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644) : log_fd;
	ssize_t w = write(fd >= 0 ? fd : STDERR_FILENO, line, len);
	(void)w; /* nowhere left to report a failing diagnostic */
	if (log_file && fd >= 0)
		sys_close(fd);
	errno = saved_errno;
}
