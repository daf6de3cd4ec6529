/*
 * Pod sandbox ("pause") process for the local node of tests/cluster/up.sh --node: holds the pod's
 * namespaces, reaps orphaned children, exits 0 on SIGINT/SIGTERM.
 * Build: gcc -static -O2 -s -o pause pause.c
 */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void handler(int sig) { (void)sig; }

int main(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    /* PID 1 only gets signals it has a handler for. */
    signal(SIGINT, handler);
    signal(SIGTERM, handler);
    signal(SIGCHLD, handler);
    for (;;) {
        int sig;
        if (sigwait(&set, &sig) != 0) continue;
        if (sig == SIGCHLD) {
            while (waitpid(-1, NULL, WNOHANG) > 0) {}
        } else {
            return 0;
        }
    }
}
