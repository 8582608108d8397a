/* lockdrv: takes locks the ways the tests need, one step per argument.
 *
 *   lockdrv STEP...      e.g.  lockdrv open:5:/mnt/c1/f ex:5 touch:/tmp/held wait:/tmp/go un:5
 *
 * Each step prints one line, "STEP ok" or "STEP err ENAME" (getlk and lockf
 * test also print what they found), and the next step runs regardless.
 * A step that succeeds but changed errno prints "STEP ok errno-changed":
 * a wrapper must leave errno alone.
 *
 *   open:FD:PATH           open PATH read-write (created) as descriptor FD
 *   ex:FD sh:FD un:FD      flock LOCK_EX / LOCK_SH / LOCK_UN
 *   exnb:FD shnb:FD        the same with LOCK_NB
 *   setlk:FD:T:START:LEN   fcntl F_SETLK, T = r|w|u (also setlkw, ofdsetlk, ofdsetlkw)
 *   getlk:FD:T:START:LEN   fcntl F_GETLK (also ofdgetlk); prints the answer
 *   lockf:FD:CMD:LEN       lockf with CMD = lock|tlock|ulock|test
 *   dup:FD:NEW             dup, then move the copy to NEW with F_DUPFD
 *   dup2:OLD:NEW dup3:OLD:NEW
 *   close:FD fclose:FD closerange:FIRST:LAST closefrom:FD
 *   write:FD:TEXT          write TEXT at the descriptor's offset
 *   touch:PATH wait:PATH   create PATH / wait (up to 30 s) until PATH exists
 *   rm:PATH                unlink PATH
 *   alarm:SECONDS          SIGALRM after SECONDS, handler without SA_RESTART
 *   forkexit               fork; the parent exits at once (the daemon idiom),
 *                          the child runs the remaining steps
 *   child{ STEP... }       run the steps up to "}" in a child process; the
 *                          parent waits for it, then goes on after "}"
 *   exit                   _exit(0) now (no destructors)
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *field(char **rest)
{
	char *f = strsep(rest, ":");
	if (f == NULL) {
		fprintf(stderr, "lockdrv: missing argument\n");
		exit(2);
	}
	return f;
}

static int num(char **rest) { return atoi(field(rest)); }

#define ERRNO_SENTINEL 4242 /* no real errno has this value */

static void report(const char *step, int r)
{
	if (r < 0)
		printf("%s err %s\n", step, strerrorname_np(errno));
	else
		printf("%s ok%s\n", step, errno == ERRNO_SENTINEL ? "" : " errno-changed");
	fflush(stdout);
}

static void on_alarm(int sig) { (void)sig; }

static short lock_type(const char *t)
{
	return t[0] == 'r' ? F_RDLCK : t[0] == 'w' ? F_WRLCK : t[0] == 'u' ? F_UNLCK : 99 /* invalid */;
}

static int record(const char *step, const char *name, char **rest)
{
	static const struct { const char *name; int cmd; } cmds[] = {
		{ "setlk", F_SETLK }, { "setlkw", F_SETLKW }, { "getlk", F_GETLK },
		{ "ofdsetlk", F_OFD_SETLK }, { "ofdsetlkw", F_OFD_SETLKW }, { "ofdgetlk", F_OFD_GETLK },
	};
	int cmd = -1;
	for (unsigned i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
		if (strcmp(name, cmds[i].name) == 0)
			cmd = cmds[i].cmd;
	if (cmd < 0)
		return -2;
	int fd = num(rest);
	struct flock fl = { .l_type = lock_type(field(rest)), .l_whence = SEEK_SET };
	fl.l_start = atoll(field(rest));
	fl.l_len = atoll(field(rest));
	errno = ERRNO_SENTINEL;
	int r = fcntl(fd, cmd, &fl);
	if (r == 0 && (cmd == F_GETLK || cmd == F_OFD_GETLK)) {
		printf("%s ok type=%s start=%lld len=%lld pid=%d\n", step,
		       fl.l_type == F_UNLCK ? "u" : fl.l_type == F_RDLCK ? "r" : "w",
		       (long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid);
		fflush(stdout);
		return 0;
	}
	report(step, r);
	return 0;
}

static void run(char *step_text)
{
	char step[1024];
	snprintf(step, sizeof step, "%s", step_text);
	char *rest = step_text;
	char *op = field(&rest);
	int r = 0;
	errno = ERRNO_SENTINEL;

	if (strcmp(op, "open") == 0) {
		int fd = num(&rest);
		int o = open(field(&rest), O_RDWR | O_CREAT, 0644);
		if (o >= 0 && o != fd) {
			r = dup2(o, fd);
			close(o);
		}
		r = o < 0 ? -1 : r;
	} else if (strcmp(op, "ex") == 0 || strcmp(op, "sh") == 0 || strcmp(op, "un") == 0 ||
		   strcmp(op, "exnb") == 0 || strcmp(op, "shnb") == 0) {
		int how = op[0] == 'e' ? LOCK_EX : op[0] == 's' ? LOCK_SH : LOCK_UN;
		if (strstr(op, "nb"))
			how |= LOCK_NB;
		r = flock(num(&rest), how);
	} else if (strcmp(op, "lockf") == 0) {
		int fd = num(&rest);
		const char *c = field(&rest);
		int cmd = !strcmp(c, "lock") ? F_LOCK : !strcmp(c, "tlock") ? F_TLOCK : !strcmp(c, "ulock") ? F_ULOCK : F_TEST;
		r = lockf(fd, cmd, atoll(field(&rest)));
	} else if (strcmp(op, "dup") == 0) {
		int fd = num(&rest), to = num(&rest);
		int d = dup(fd);
		r = d < 0 ? -1 : fcntl(d, F_DUPFD, to);
		if (d >= 0)
			close(d);
	} else if (strcmp(op, "dup2") == 0) {
		int a = num(&rest);
		r = dup2(a, num(&rest));
	} else if (strcmp(op, "dup3") == 0) {
		int a = num(&rest);
		r = dup3(a, num(&rest), O_CLOEXEC);
	} else if (strcmp(op, "close") == 0) {
		r = close(num(&rest));
	} else if (strcmp(op, "fclose") == 0) {
		FILE *f = fdopen(num(&rest), "r+");
		r = f == NULL ? -1 : fclose(f);
	} else if (strcmp(op, "closerange") == 0) {
		unsigned a = (unsigned)num(&rest);
		r = close_range(a, (unsigned)num(&rest), 0);
	} else if (strcmp(op, "closefrom") == 0) {
		closefrom(num(&rest));
	} else if (strcmp(op, "write") == 0) {
		int fd = num(&rest);
		const char *text = field(&rest);
		r = (int)write(fd, text, strlen(text));
	} else if (strcmp(op, "touch") == 0) {
		int fd = open(field(&rest), O_WRONLY | O_CREAT, 0644);
		r = fd < 0 ? -1 : close(fd);
	} else if (strcmp(op, "rm") == 0) {
		r = unlink(field(&rest));
	} else if (strcmp(op, "wait") == 0) {
		const char *path = field(&rest);
		struct stat st;
		struct timespec tick = { 0, 5000000 };
		for (int i = 0; i < 6000 && stat(path, &st) != 0; i++)
			nanosleep(&tick, NULL);
		r = stat(path, &st);
	} else if (strcmp(op, "alarm") == 0) {
		struct sigaction sa = { .sa_handler = on_alarm }; /* no SA_RESTART */
		sigaction(SIGALRM, &sa, NULL);
		alarm((unsigned)num(&rest));
	} else if (strcmp(op, "exit") == 0) {
		printf("%s ok\n", step);
		fflush(stdout);
		_exit(0);
	} else if ((r = record(step, op, &rest)) == 0) {
		return;
	} else {
		fprintf(stderr, "lockdrv: unknown step %s\n", step);
		exit(2);
	}
	report(step, r);
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "forkexit") == 0) {
			pid_t pid = fork();
			if (pid != 0)
				_exit(pid < 0);
			printf("forkexit ok\n");
			fflush(stdout);
			continue;
		}
		if (strcmp(argv[i], "child{") == 0) {
			int end = i + 1;
			while (end < argc && strcmp(argv[end], "}") != 0)
				end++;
			pid_t pid = fork();
			if (pid == 0) {
				for (int j = i + 1; j < end; j++)
					run(argv[j]);
				exit(0);
			}
			waitpid(pid, NULL, 0);
			i = end;
			continue;
		}
		run(argv[i]);
	}
	return 0;
}
