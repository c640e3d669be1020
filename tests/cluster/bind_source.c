/* LD_PRELOAD shim for the mini-cluster's Grid Engine execution daemons: binds each
 * outgoing IPv4 socket to $NBT_SOURCE_ADDR before connect().
 *
 * qmaster accepts an execd only if the connection's source address resolves to the host
 * name the execd claims. Both nodes run on this machine, where a connection to the
 * loopback qmaster leaves from 127.0.0.1 whatever the node; binding it to the node's own
 * address (c1 127.0.0.2, c2 127.0.0.3) makes each execd the host it claims to be. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_connect)(int, const struct sockaddr *, socklen_t);
    if (!real_connect)
        real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    const char *source = getenv("NBT_SOURCE_ADDR");
    if (source && addr && addr->sa_family == AF_INET) {
        struct sockaddr_in local = {.sin_family = AF_INET};
        struct sockaddr_in bound;
        socklen_t bound_len = sizeof bound;
        if (inet_pton(AF_INET, source, &local.sin_addr) == 1
            && getsockname(fd, (struct sockaddr *)&bound, &bound_len) == 0
            && bound.sin_family == AF_INET && bound.sin_port == 0)
            bind(fd, (struct sockaddr *)&local, sizeof local);
    }
    return real_connect(fd, addr, len);
}
