/*
 * test_notify.c - the sd_notify protocol without libsystemd
 * (daemon/notify.c): datagrams to a path or an abstract socket, nothing
 * without $NOTIFY_SOCKET, and the watchdog interval from the environment.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "altgrad/altgrad.h"
#include "daemon/notify.h"

static int bind_dgram(const char *path, int abstract) {
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    memcpy(sa.sun_path, path, len);
    if (abstract) sa.sun_path[0] = '\0';
    socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sl), 0);
    return fd;
}

static void expect_datagram(int fd, const char *want) {
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    cr_assert_gt(n, 0, "no datagram");
    buf[n] = '\0';
    cr_expect_str_eq(buf, want);
}

Test(notify, states_reach_a_socket_given_by_path) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/ag_notify_%d.sock", (int)getpid());
    unlink(path);
    int fd = bind_dgram(path, 0);
    setenv("NOTIFY_SOCKET", path, 1);
    cr_assert_eq(ag_notify("READY=1"), AG_OK);
    expect_datagram(fd, "READY=1");
    cr_assert_eq(ag_notify("STATUS=3 runs"), AG_OK);
    expect_datagram(fd, "STATUS=3 runs");
    close(fd);
    unlink(path);
    unsetenv("NOTIFY_SOCKET");
}

Test(notify, states_reach_an_abstract_socket) {
    char name[64];
    snprintf(name, sizeof name, "@ag_notify_test_%d", (int)getpid());
    int fd = bind_dgram(name, 1);
    setenv("NOTIFY_SOCKET", name, 1);
    cr_assert_eq(ag_notify("STOPPING=1"), AG_OK);
    expect_datagram(fd, "STOPPING=1");
    close(fd);
    unsetenv("NOTIFY_SOCKET");
}

Test(notify, without_notify_socket_nothing_is_sent_and_nothing_fails) {
    unsetenv("NOTIFY_SOCKET");
    cr_expect_eq(ag_notify("READY=1"), AG_OK);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    cr_expect_eq(ag_notify("READY=1"), AG_EINVAL);
    unsetenv("NOTIFY_SOCKET");
}

Test(notify, the_watchdog_interval_is_ours_only_when_the_pid_matches) {
    setenv("WATCHDOG_USEC", "500000", 1);
    unsetenv("WATCHDOG_PID");
    cr_expect_eq(ag_notify_watchdog_usec(), 500000);
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    cr_expect_eq(ag_notify_watchdog_usec(), 500000);
    setenv("WATCHDOG_PID", "1", 1);
    cr_expect_eq(ag_notify_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "soon", 1);
    cr_expect_eq(ag_notify_watchdog_usec(), 0);
    unsetenv("WATCHDOG_USEC");
    cr_expect_eq(ag_notify_watchdog_usec(), 0);
}
