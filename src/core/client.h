/* The shim's side of the keeper conversation: find (or start) this user's
 * keeper, send one request, wait for its reply. */
#ifndef UUIDLOCK_CLIENT_H
#define UUIDLOCK_CLIENT_H

#include "config.h"
#include "grants.h"
#include "keeper_proto.h"

/* The path of the keeper's file NAME ("keeper.sock", "keeper.pid" ...) in
 * the runtime directory dir.  Each pid namespace has its own keeper: only
 * its /proc names its clients' locks (a /tmp shared with a container would
 * otherwise give the container's processes the host's keeper, or the host's
 * processes the container's).  Outside the initial pid namespace, NAME gets
 * the namespace's inode: "keeper.4026532301.sock".  Returns 0, or an errno
 * (ENAMETOOLONG: more than cap). */
int keeper_file(char *out, size_t cap, const char *dir, const char *name);

/* Sends req and waits for the reply.  Returns 0 with *rep filled in, or an
 * errno: EINTR when a signal interrupted the wait (the request is then
 * withdrawn), ENOENT for a check when no keeper runs, anything else when no
 * keeper could be reached (rep->message then says why).  keeper_program is
 * the absolute path of uuidlock-keeper.  grant (may be NULL) gets a HELD
 * reply's grant (zero if none), *table_fd (may be NULL) the grant table's
 * descriptor if the keeper sent it (close-on-exec, the caller's to close),
 * else -1; see grants.h. */
int keeper_call(const struct config *c, const char *keeper_program, const struct keeper_request *req,
		struct keeper_reply *rep, struct keeper_grant *grant, int *table_fd);

#endif
