/*
 * A tiny static test program for the local node (tests/cluster/node-selfcheck.sh), so no image
 * ever has to be pulled:
 *
 *   probe serve PORT          HTTP/1.0 server: answers every request with 200 "probe ok <hostname>"
 *   probe http HOST PORT      sends GET / to HOST:PORT (an IPv4 address), prints the status line
 *   probe dns NAME            resolves NAME (A record) with the first nameserver of /etc/resolv.conf
 *   probe check NAME PORT     the pod-side checks: the `kubernetes` Service
 *                             ($KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT) answers HTTP
 *                             (an HTTPS port answers a plain request with 400), NAME resolves
 *                             and http://NAME:PORT answers 200; exit 0 if all pass
 *
 * Build: gcc -static -O2 -s -o probe probe.c
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static void set_timeout(int fd, int secs) {
    struct timeval tv = {secs, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int serve(int port) {
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) { perror("bind/listen"); return 1; }
    printf("probe: serving on :%d\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        set_timeout(c, 5);
        char buf[2048];
        ssize_t n = read(c, buf, sizeof buf - 1);
        if (n > 0) {
            char body[400], resp[800];
            int bl = snprintf(body, sizeof body, "probe ok %s\n", host);
            int rl = snprintf(resp, sizeof resp,
                              "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", bl, body);
            if (write(c, resp, rl) < 0) {}
        }
        close(c);
    }
}

/* Prints the status line of GET / into line; returns the HTTP status or -1. */
static int http_get(const char *ip, int port, char *line, size_t len) {
    line[0] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { snprintf(line, len, "bad address %s", ip); return -1; }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    set_timeout(s, 5);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) { snprintf(line, len, "connect: %s", strerror(errno)); close(s); return -1; }
    const char req[] = "GET / HTTP/1.0\r\nHost: probe\r\n\r\n";
    if (write(s, req, sizeof req - 1) < 0) {}
    char buf[4096];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = read(s, buf + got, sizeof buf - 1 - got)) > 0) got += n;
    close(s);
    buf[got] = 0;
    char *eol = strpbrk(buf, "\r\n");
    if (eol) *eol = 0;
    snprintf(line, len, "%.200s", buf);
    int code;
    if (sscanf(buf, "HTTP/%*s %d", &code) == 1) return code;
    return -1;
}

static int nameserver(char *ip, size_t len) {
    FILE *f = fopen("/etc/resolv.conf", "r");
    if (!f) return -1;
    char l[512];
    while (fgets(l, sizeof l, f)) {
        char ns[64];
        if (sscanf(l, "nameserver %63s", ns) == 1) { snprintf(ip, len, "%s", ns); fclose(f); return 0; }
    }
    fclose(f);
    return -1;
}

/* Resolves name to an IPv4 address string (A query over UDP); returns 0 on success. */
static int dns_a(const char *name, char *out, size_t len) {
    char ns[64];
    if (nameserver(ns, sizeof ns)) { snprintf(out, len, "no nameserver in /etc/resolv.conf"); return -1; }
    unsigned char q[512], r[1500];
    size_t n = 12;
    memset(q, 0, 12);
    q[0] = 0x4a; q[1] = 0x17; q[2] = 0x01; /* id, RD */ q[5] = 1; /* QDCOUNT */
    const char *p = name;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t l = dot ? (size_t)(dot - p) : strlen(p);
        if (l == 0 || l > 63 || n + l + 6 > sizeof q) break;
        q[n++] = (unsigned char)l;
        memcpy(q + n, p, l);
        n += l;
        p += l;
        if (*p == '.') p++;
    }
    q[n++] = 0;
    q[n++] = 0; q[n++] = 1; /* A */
    q[n++] = 0; q[n++] = 1; /* IN */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(53)};
    inet_pton(AF_INET, ns, &a.sin_addr);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    set_timeout(s, 2);
    ssize_t got = -1;
    for (int tries = 0; tries < 3 && got < 0; tries++) {
        sendto(s, q, n, 0, (struct sockaddr *)&a, sizeof a);
        got = recv(s, r, sizeof r, 0);
    }
    close(s);
    if (got < 12) { snprintf(out, len, "no answer from %s", ns); return -1; }
    int rcode = r[3] & 0x0f, ancount = (r[6] << 8) | r[7];
    if (rcode != 0 || ancount == 0) { snprintf(out, len, "rcode %d, %d answers (server %s)", rcode, ancount, ns); return -1; }
    size_t i = 12;
    while (i < (size_t)got && r[i]) i += r[i] + 1; /* question name (uncompressed) */
    i += 5;
    for (int k = 0; k < ancount && i + 12 <= (size_t)got; k++) {
        if ((r[i] & 0xc0) == 0xc0) i += 2;
        else { while (i < (size_t)got && r[i]) i += r[i] + 1; i++; }
        int type = (r[i] << 8) | r[i + 1], rdlen = (r[i + 8] << 8) | r[i + 9];
        i += 10;
        if (type == 1 && rdlen == 4 && i + 4 <= (size_t)got) {
            snprintf(out, len, "%u.%u.%u.%u", r[i], r[i + 1], r[i + 2], r[i + 3]);
            return 0;
        }
        i += rdlen;
    }
    snprintf(out, len, "no A record");
    return -1;
}

int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    setvbuf(stdout, NULL, _IOLBF, 0);
    char line[512];
    if (argc == 3 && !strcmp(argv[1], "serve")) return serve(atoi(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "http")) {
        int code = http_get(argv[2], atoi(argv[3]), line, sizeof line);
        printf("%s\n", line);
        return code > 0 ? 0 : 1;
    }
    if (argc == 3 && !strcmp(argv[1], "dns")) {
        int rc = dns_a(argv[2], line, sizeof line);
        printf("%s\n", line);
        return rc ? 1 : 0;
    }
    if (argc == 4 && !strcmp(argv[1], "check")) {
        int failed = 0, code;
        const char *kh = getenv("KUBERNETES_SERVICE_HOST"), *kp = getenv("KUBERNETES_SERVICE_PORT");
        if (!kh || !kp) { printf("FAIL kubernetes service: no KUBERNETES_SERVICE_HOST/PORT\n"); failed = 1; }
        else {
            code = http_get(kh, atoi(kp), line, sizeof line);
            /* A Go HTTPS server answers a plain-text request with 400 */
            printf("%s kubernetes service %s:%s -> %s\n", code == 400 ? "ok" : "FAIL", kh, kp, line);
            failed |= code != 400;
        }
        char ip[128];
        if (dns_a(argv[2], ip, sizeof ip)) { printf("FAIL dns %s: %s\n", argv[2], ip); failed = 1; }
        else {
            printf("ok dns %s -> %s\n", argv[2], ip);
            code = http_get(ip, atoi(argv[3]), line, sizeof line);
            printf("%s http %s:%s -> %s\n", code == 200 ? "ok" : "FAIL", ip, argv[3], line);
            failed |= code != 200;
        }
        return failed;
    }
    fprintf(stderr, "usage: probe serve PORT | http IP PORT | dns NAME | check NAME PORT\n");
    return 2;
}
