#include "netfs.h"

#include <stddef.h>
#include <string.h>

static const struct {
	long magic;
	const char *name;
} shares[] = {
	{ 0x6969, "nfs" },           { 0x517B, "smb" },         { (long)0xFF534D42, "cifs" },
	{ (long)0xFE534D42, "smb2" }, { 0x65735546, "fuse" },     { 0x01021997, "9p" },
	{ 0x00C36400, "ceph" },       { 0x5346414F, "afs" },      { 0x6B414653, "kafs" },
	{ 0x73757245, "coda" },       { 0x0BD00BD0, "lustre" },   { 0x01161970, "gfs2" },
	{ 0x7461636f, "ocfs2" },      { 0x13661366, "orangefs" }, { 0x564c, "ncp" },
};

const char *netfs_name(long f_type)
{
	for (size_t i = 0; i < sizeof shares / sizeof shares[0]; i++)
		if (shares[i].magic == f_type || (shares[i].magic & 0xFFFFFFFFL) == (f_type & 0xFFFFFFFFL))
			return shares[i].name;
	return NULL;
}

bool netfs_type(long f_type)
{
	return netfs_name(f_type) != NULL;
}

bool netfs_fstype(const char *type)
{
	static const char *const types[] = {
		"nfs", "nfs4", "smb3", "smbfs", "cifs", "9p", "ceph", "afs", "coda",
		"lustre", "gfs2", "ocfs2", "orangefs", "ncpfs", "ncp",
	};
	if (strncmp(type, "fuse", 4) == 0 && strcmp(type, "fusectl") != 0)
		return true; /* fuse, fuse.sshfs, fuseblk ... */
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
		if (strcmp(type, types[i]) == 0)
			return true;
	return false;
}
