/* The workers phase's load generator (bench/native_load.py builds and runs it).
 *
 * Target (c) divides the chat turns/s of WORKERS=cores by those of WORKERS=1 with every party on
 * the same 2 cores, so the client's own CPU per stream is taken from the backend's workers. The
 * Python load generator (bench/loadgen.py) costs 1.0-1.3 ms of CPU per stream there, a tenth of
 * a turn's backend CPU; this client, the same requests on one epoll loop, a small fraction of
 * that. It does what `bench.loadgen.run_load` does for a `chat_target`: C clients, client i
 * starting at ramp * i / C, each running `rounds` turns back to back, one connection per turn
 * (`connection: close`), with its own user's token (one turn per user at a time, as the
 * backend requires).
 *
 * It reads the answer as bytes and looks for three things, as the Python reader classifies
 * frames: the status line, each `event: delta` (the first one's arrival is the time to first event; their
 * number is the text fragments) and `event: done` (the turn ended well). A marker split between two reads is still found (the last bytes of a
 * read are kept); the backend writes each event whole, so a marker is never cut by a chunk
 * header. The answer ends with the chunked body's last chunk or when the server closes.
 *
 * Usage: saturation_client HOST PORT PATH ROUNDS CONCURRENCY RAMP_MS TIMEOUT_MS < tokens
 * (one bearer token per line, one per client). Prints one line per turn:
 *   client round status ok start_ns first_event_ns end_ns deltas error
 * (first_event_ns -1 when none; error "-" or a word), then `cpu <user_ns> <system_ns>`.
 * Clocks are CLOCK_MONOTONIC, as Python's time.monotonic_ns().
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TAIL 32

typedef struct {
    int fd;
    int round;
    int64_t next_start; /* when this client starts its next turn (ns), -1: running or done */
    int64_t start, first_event, deadline;
    int status;
    int done, ended;
    int deltas; /* `event: delta` frames (text fragments) */
    char *request;
    size_t request_len, sent;
    char tail[TAIL * 2];
    size_t tail_len;
    size_t received;
    char head[64];
    size_t head_len;
} client_t;

static const char *host, *path;
static int port, rounds, concurrency;
static int64_t ramp_ns, timeout_ns;
static char **tokens;
static client_t *clients;
static int epfd, finished;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void build_request(client_t *c, int index) {
    char body[64];
    int body_len = snprintf(body, sizeof body, "{\"content\": \"bench turn %d\"}", c->round);
    free(c->request);
    c->request = NULL;
    int n = asprintf(&c->request,
                     "POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n"
                     "accept: text/event-stream\r\ncontent-length: %d\r\nconnection: close\r\n"
                     "authorization: Bearer %s\r\n\r\n%s",
                     path, host, port, body_len, tokens[index], body);
    if (n < 0) {
        perror("asprintf");
        exit(2);
    }
    c->request_len = (size_t)n;
    c->sent = 0;
}

static void report(client_t *c, int index, const char *error) {
    int ok = error == NULL && c->status == 200 && c->done;
    if (error == NULL && !ok)
        error = c->status != 200 ? "status" : "no_done_event";
    printf("%d %d %d %d %lld %lld %lld %d %s\n", index, c->round, c->status, ok,
           (long long)c->start, (long long)(c->first_event ? c->first_event : -1),
           (long long)now_ns(), c->deltas, error ? error : "-");
}

static void finish(client_t *c, int index, const char *error) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    report(c, index, error);
    c->round++;
    if (c->round < rounds) {
        c->next_start = 0; /* back to back */
    } else {
        c->next_start = -1;
        finished++;
    }
}

static void start(client_t *c, int index) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    c->next_start = -1;
    c->start = now_ns();
    c->deadline = c->start + timeout_ns;
    c->first_event = 0;
    c->status = 0;
    c->done = c->ended = c->deltas = 0;
    c->tail_len = c->received = c->head_len = 0;
    build_request(c, index);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        finish(c, index, "connect");
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)index};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

/* Markers in the bytes just read, with the kept tail of the previous read in front. */
static void scan(client_t *c, const char *data, size_t n) {
    char window[TAIL * 2 + 65536];
    memcpy(window, c->tail, c->tail_len);
    size_t len = c->tail_len;
    size_t take = n < sizeof window - len ? n : sizeof window - len;
    memcpy(window + len, data, take);
    len += take;
    /* Every `event: delta` that ends in the new bytes (one wholly in the kept tail was counted
       with the previous read). */
    for (const char *at = window; (at = memmem(at, len - (size_t)(at - window), "event: delta", 12));
         at += 12) {
        if ((size_t)(at - window) + 12 > c->tail_len) {
            if (!c->first_event)
                c->first_event = now_ns();
            c->deltas++;
        }
    }
    if (!c->done && memmem(window, len, "event: done", 11))
        c->done = 1;
    if (memmem(window, len, "\r\n0\r\n\r\n", 7))
        c->ended = 1;
    size_t keep = len < TAIL ? len : TAIL;
    memcpy(c->tail, window + len - keep, keep);
    c->tail_len = keep;
}

static void readable(client_t *c, int index) {
    char buf[65536];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n > 0) {
            if (c->head_len < sizeof c->head - 1) {
                size_t take = (size_t)n < sizeof c->head - 1 - c->head_len
                                  ? (size_t)n
                                  : sizeof c->head - 1 - c->head_len;
                memcpy(c->head + c->head_len, buf, take);
                c->head_len += take;
                c->head[c->head_len] = 0;
                if (!c->status && c->head_len >= 12)
                    c->status = atoi(c->head + 9); /* "HTTP/1.1 200" */
            }
            c->received += (size_t)n;
            scan(c, buf, (size_t)n);
            if (c->ended) {
                finish(c, index, NULL);
                return;
            }
            continue;
        }
        if (n == 0) { /* the server closed: the answer is complete */
            finish(c, index, c->received ? NULL : "closed");
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        finish(c, index, "read");
        return;
    }
}

static void writable(client_t *c, int index) {
    while (c->sent < c->request_len) {
        ssize_t n = write(c->fd, c->request + c->sent, c->request_len - c->sent);
        if (n < 0) {
            if (errno == EAGAIN)
                return;
            finish(c, index, "write");
            return;
        }
        c->sent += (size_t)n;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)index};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT PATH ROUNDS CONCURRENCY RAMP_MS TIMEOUT_MS\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = atoi(argv[2]);
    path = argv[3];
    rounds = atoi(argv[4]);
    concurrency = atoi(argv[5]);
    ramp_ns = (int64_t)(atof(argv[6]) * 1e6);
    timeout_ns = (int64_t)(atof(argv[7]) * 1e6);
    tokens = calloc((size_t)concurrency, sizeof *tokens);
    clients = calloc((size_t)concurrency, sizeof *clients);
    char line[4096];
    for (int i = 0; i < concurrency; i++) {
        if (!fgets(line, sizeof line, stdin)) {
            fprintf(stderr, "need %d tokens on stdin\n", concurrency);
            return 2;
        }
        line[strcspn(line, "\r\n")] = 0;
        tokens[i] = strdup(line);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    int64_t t0 = now_ns();
    for (int i = 0; i < concurrency; i++) {
        clients[i].fd = -1;
        clients[i].next_start =
            concurrency > 1 && ramp_ns > 0 ? t0 + ramp_ns * i / concurrency : t0;
    }
    struct epoll_event events[1024];
    while (finished < concurrency) {
        int64_t now = now_ns(), wake = now + 50000000LL;
        for (int i = 0; i < concurrency; i++) {
            client_t *c = &clients[i];
            if (c->fd < 0 && c->next_start >= 0) {
                if (c->next_start <= now)
                    start(c, i);
                else if (c->next_start < wake)
                    wake = c->next_start;
            }
            if (c->fd >= 0) {
                if (c->deadline <= now)
                    finish(c, i, "timeout");
                else if (c->deadline < wake)
                    wake = c->deadline;
            }
        }
        int64_t wait_ms = (wake - now_ns()) / 1000000;
        int n = epoll_wait(epfd, events, 1024, wait_ms < 0 ? 0 : (int)wait_ms + 1);
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            client_t *c = &clients[i];
            if (c->fd < 0)
                continue;
            if (events[k].events & EPOLLOUT)
                writable(c, i);
            if (c->fd >= 0 && events[k].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                readable(c, i);
        }
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    printf("cpu %lld %lld\n",
           (long long)usage.ru_utime.tv_sec * 1000000000LL + usage.ru_utime.tv_usec * 1000LL,
           (long long)usage.ru_stime.tv_sec * 1000000000LL + usage.ru_stime.tv_usec * 1000LL);
    return 0;
}
