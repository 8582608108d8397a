/* Diagnostics: one line each, "uuidlock: " first, written with a single
 * write(2) so that lines from concurrent processes never interleave.
 * Never touches stdout or stdio buffers of the host program. */
#ifndef UUIDLOCK_LOG_H
#define UUIDLOCK_LOG_H

enum log_level { LOG_OFF, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Parses "off", "error", "warn", "info", "debug"; -1 if none of them. */
int log_level_parse(const char *s);
void log_set_level(enum log_level level);
void log_set_fd(int fd);
/* Appends to this file instead (opened and closed per line, so the shim
 * holds no descriptor a program could close or inherit). */
void log_set_file(const char *path);
int log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
