#include "grantcache.h"

#include "../core/sys.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

/* A few files at once is what programs lock (SQLite: the database, its
 * journal's neighbour locks); the oldest record makes room. */
#define GRANTS_KEPT 16

struct grant_record {
	pid_t pid; /* who was granted: a forked child is not (0: empty) */
	uint64_t dev, ino;
	uint64_t table;
	uint32_t slot;
	uint64_t seq;
};

/* Everything under one mutex, only ever tried: a thread that finds it busy
 * (another thread, or a signal handler's lock call inside ours) asks the
 * keeper, as without the cache.  So does a forked child whose parent had it
 * locked: it is locked forever there, which is correct, only slower. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const struct grant_table *table; /* mapped read-only, or NULL */
static struct grant_record records[GRANTS_KEPT];
static unsigned next_victim;

uint64_t grantcache_table(void)
{
	uint64_t instance = 0;
	if (pthread_mutex_trylock(&lock) == 0) {
		instance = table != NULL ? table->instance : 0;
		pthread_mutex_unlock(&lock);
	}
	return instance;
}

/* A new keeper's table replaces the old one's: every record names the
 * table instance it came from, so the old grants are void anyway. */
void grantcache_take_table(int fd)
{
	if (fd < 0)
		return;
	void *t = mmap(NULL, sizeof *table, PROT_READ, MAP_SHARED, fd, 0);
	sys_close(fd);
	if (t == MAP_FAILED)
		return;
	if (pthread_mutex_trylock(&lock) != 0) {
		munmap(t, sizeof *table);
		return;
	}
	if (table != NULL)
		munmap((void *)table, sizeof *table);
	table = t;
	pthread_mutex_unlock(&lock);
}

static struct grant_record *record_of(const struct managed_file *mf, pid_t pid)
{
	for (unsigned i = 0; i < GRANTS_KEPT; i++)
		if (records[i].pid == pid && records[i].dev == mf->dev && records[i].ino == mf->ino)
			return &records[i];
	return NULL;
}

void grantcache_remember(const struct managed_file *mf, const struct keeper_grant *g)
{
	if (g->table == 0 || pthread_mutex_trylock(&lock) != 0)
		return;
	pid_t pid = getpid();
	struct grant_record *r = record_of(mf, pid);
	if (r == NULL) {
		r = &records[next_victim];
		next_victim = (next_victim + 1) % GRANTS_KEPT;
	}
	*r = (struct grant_record){ .pid = pid, .dev = mf->dev, .ino = mf->ino,
				    .table = g->table, .slot = g->slot, .seq = g->seq };
	pthread_mutex_unlock(&lock);
}

bool grantcache_covers(const struct managed_file *mf)
{
	if (pthread_mutex_trylock(&lock) != 0)
		return false;
	const struct grant_record *r = record_of(mf, getpid());
	bool covered = r != NULL && table != NULL && r->table == table->instance &&
		       grant_still_good(table, r->slot, r->seq);
	pthread_mutex_unlock(&lock);
	return covered;
}
