/* The keeper's side of the grant table (src/core/grants.h): a sealed memfd
 * mapped by every client that was answered HELD, a slot per entry.  Slots
 * are taken and given back under a mutex (share threads create entries);
 * each slot is written only by the thread of its entry.  No share I/O. */
#include "keeper.h"

#include "../core/grants.h"
#include "../core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

static struct grant_table *table;
static int table_fd = -1;
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t free_slots[GRANT_SLOTS], nfree;

int grants_init(void)
{
	int fd = memfd_create("uuidlock-grants", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return errno;
	struct grant_table *t = MAP_FAILED;
	if (ftruncate(fd, sizeof *t) == 0)
		t = mmap(NULL, sizeof *t, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	/* No client's mapping can be cut short (SIGBUS), and none can write:
	 * only our mapping, made before the seal, may. */
	if (t == MAP_FAILED ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) != 0) {
		int err = errno;
		if (t != MAP_FAILED)
			munmap(t, sizeof *t);
		close(fd);
		return err;
	}
	while (t->instance == 0)
		if (getrandom(&t->instance, sizeof t->instance, 0) != sizeof t->instance)
			t->instance = (uint64_t)mono_ns() ^ ((uint64_t)getpid() << 40);
	for (uint32_t i = 0; i < GRANT_SLOTS; i++)
		free_slots[i] = GRANT_SLOTS - 1 - i;
	nfree = GRANT_SLOTS;
	table = t;
	table_fd = fd;
	return 0;
}

/* A slot for a new entry: GRANT_NO_SLOT if none is left (or there is no
 * table): its clients then ask the keeper at every lock call. */
uint32_t grant_slot_open(void)
{
	if (table == NULL)
		return GRANT_NO_SLOT;
	pthread_mutex_lock(&slots_lock);
	uint32_t slot = nfree > 0 ? free_slots[--nfree] : GRANT_NO_SLOT;
	pthread_mutex_unlock(&slots_lock);
	return slot;
}

/* The entry ends: no grant made for it holds any more.  seq only ever
 * grows, so a client's (slot, seq) never matches the slot's next entry. */
void grant_slot_close(uint32_t slot)
{
	if (slot >= GRANT_SLOTS)
		return;
	__atomic_store_n(&table->slot[slot].valid_until_boot, 0, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&table->slot[slot].seq, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_lock(&slots_lock);
	free_slots[nfree++] = slot;
	pthread_mutex_unlock(&slots_lock);
}

/* Before this thread reads /proc/locks: every grant of its entries must be
 * asked about again (src/core/grants.h). */
void grants_before_looking_at_locks(void)
{
	for (struct entry *e = entries; e != NULL; e = e->next)
		if (e->slot < GRANT_SLOTS)
			__atomic_add_fetch(&table->slot[e->slot].seq, 1, __ATOMIC_SEQ_CST);
}

/* The sidecar is surely ours until `until` (CLOCK_BOOTTIME). */
void grant_slot_vouch(uint32_t slot, int64_t until)
{
	if (slot < GRANT_SLOTS)
		__atomic_store_n(&table->slot[slot].valid_until_boot, until, __ATOMIC_SEQ_CST);
}

/* What a HELD reply about e says: the slot and its seq now (0s: no slot). */
struct keeper_grant grant_of(const struct entry *e)
{
	if (e->slot >= GRANT_SLOTS)
		return (struct keeper_grant){ 0 };
	return (struct keeper_grant){
		.table = table->instance,
		.slot = e->slot,
		.seq = __atomic_load_n(&table->slot[e->slot].seq, __ATOMIC_SEQ_CST),
	};
}

/* The table's descriptor for a client that has table `has` mapped (0: none),
 * or -1 if it has ours already. */
int grant_table_fd_for(uint64_t has)
{
	return table != NULL && has != table->instance ? table_fd : -1;
}
