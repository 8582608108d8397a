/* Data coherence around a sidecar's hand-over between hosts.  A kernel lock
 * on a network filesystem flushes and revalidates cached data; the sidecar
 * must do the same, for every local process at once: the page cache is the
 * host's, so the keeper does it by path.
 *   - before the sidecar goes (released, yielded, recalled): the guarded
 *     files' data is flushed to the share, also what processes that ended by
 *     exit or crash left dirty;
 *   - when the host acquires it (another host may have written meanwhile):
 *     the guarded files' cached pages are dropped before any local process
 *     is told it holds the lock.  While the hold lasts no other host writes,
 *     so a continuous hold needs no drop.
 * The guarded files: the locked file; for SQLite's WAL index "DB-shm" also
 * "DB" and "DB-wal", whose data the WAL index's locks guard. */
#ifndef UUIDLOCK_COHERENCE_H
#define UUIDLOCK_COHERENCE_H

#include <stdbool.h>
#include <stddef.h>

/* file: the locked file's path (the sidecar's, less the suffix). */
void coherence_flush(const char *file);
void coherence_drop(const char *file);

/* True for SQLite's WAL index, "*-shm". */
bool coherence_is_wal_index(const char *file);

#endif
