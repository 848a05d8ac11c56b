/* Which offloads each fd runs with, and what they did. Set by tunOpen/udpOpen, read by the readers
 * and writers, cleared by closeFd. A table indexed by fd: no lookup cost on the packet path. */
#include "offload.h"

#include <string.h>

/* fds at or above this run without offloads (a daemon has a handful; the relay a few). */
#define STATE_FDS 4096

static offload_state_t states[STATE_FDS];

offload_state_t *offload_state(int fd) { return fd >= 0 && fd < STATE_FDS ? &states[fd] : NULL; }

void offload_forget(int fd) {
  offload_state_t *s = offload_state(fd);
  if (s) memset(s, 0, sizeof *s);
}
