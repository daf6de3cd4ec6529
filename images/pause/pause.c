/*
 * pause: the process that holds a pod's namespaces open (the "sandbox" or "infra" container).
 *
 * It does nothing but wait. SIGINT or SIGTERM ends it with status 0. As PID 1 of a pod that
 * shares its PID namespace, it also inherits orphaned processes, so it reaps every child that
 * exits (SIGCHLD) to keep zombies from piling up.
 *
 * The signals are blocked and taken synchronously with sigwaitinfo(), so no work happens in a
 * signal handler. The handlers installed below are empty on purpose: a PID 1 only receives
 * signals it has a handler for, and a handler also overrides an inherited SIG_IGN.
 *
 * Build: gcc -static -O2 -s -Wall -Wextra -Werror -DVERSION='"x.y.z"' -o pause pause.c
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef VERSION
#define VERSION "unknown"
#endif

static void ignore(int sig) { (void)sig; }

int main(int argc, char **argv) {
    if (argc > 1) {
        if (argc == 2 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
            printf("pause %s\n", VERSION);
            return 0;
        }
        fprintf(stderr, "usage: %s [-v]\n", argv[0]);
        return 2;
    }

    static const int sigs[] = {SIGINT, SIGTERM, SIGCHLD};
    sigset_t wait_for;
    sigemptyset(&wait_for);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = ignore;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = sigs[i] == SIGCHLD ? SA_NOCLDSTOP : 0;
        if (sigaction(sigs[i], &sa, NULL) != 0) {
            perror("pause: sigaction");
            return 1;
        }
        sigaddset(&wait_for, sigs[i]);
    }
    if (sigprocmask(SIG_BLOCK, &wait_for, NULL) != 0) {
        perror("pause: sigprocmask");
        return 1;
    }

    if (getpid() != 1) {
        fprintf(stderr, "pause: not PID 1; orphaned processes will not be reaped here\n");
    }

    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&wait_for, &info);
        if (sig < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("pause: sigwaitinfo");
            return 1;
        }
        if (sig == SIGCHLD) {
            /* Signals coalesce: one SIGCHLD may stand for many exits, so reap them all. */
            while (waitpid(-1, NULL, WNOHANG) > 0) {
            }
            continue;
        }
        fprintf(stderr, "pause: %s, exiting\n", strsignal(sig));
        return 0;
    }
}
