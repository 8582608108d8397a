/* The shim's side of the keeper conversation: find (or start) this user's
 * keeper, send one request, wait for its reply. */
#ifndef UUIDLOCK_CLIENT_H
#define UUIDLOCK_CLIENT_H

#include "config.h"
#include "keeper_proto.h"

/* Sends req and waits for the reply.  Returns 0 with *rep filled in, or an
 * errno: EINTR when a signal interrupted the wait (the request is then
 * withdrawn), ENOENT for a check when no keeper runs, anything else when no keeper could be reached (rep->message
 * then says why).  keeper_program is the absolute path of uuidlock-keeper. */
int keeper_call(const struct config *c, const char *keeper_program,
		const struct keeper_request *req, struct keeper_reply *rep);

#endif
