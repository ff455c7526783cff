// newconn_load PORT CONNS SECONDS OUT: a load generator that records every request, for
// rollout_timeline.py. CONNS clients on 127.0.0.1:PORT, each opening a new connection per
// request (`Connection: close`), one blocking thread each, for SECONDS (at most 2,000,000
// requests a client); writes "start_ns latency_ns" per request to OUT, the start on
// CLOCK_MONOTONIC (Python's time.monotonic_ns()), the latency -1 when the connection was
// refused, -2 when nothing was read. wrk reports only percentiles; this says when each slow
// request began.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static int port, secs; static long long t_end;
typedef struct { long long *s, *l; long n, cap; } rec;
static long long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }
static const char req[] = "GET /sleep/?duration=0s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
static void *client(void *arg) {
  rec *r = arg; char buf[4096];
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)}; a.sin_addr.s_addr = htonl(0x7f000001);
  while (now() < t_end && r->n < r->cap) {
    long long t0 = now();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (void *)&a, sizeof a) < 0) { close(fd); r->s[r->n] = t0; r->l[r->n++] = -1; continue; }
    if (write(fd, req, sizeof req - 1) < 0) { close(fd); continue; }
    long got = 0, k;
    while ((k = read(fd, buf, sizeof buf)) > 0) got += k;
    close(fd);
    r->s[r->n] = t0; r->l[r->n++] = got > 0 ? now() - t0 : -2;
  }
  return 0;
}
int main(int argc, char **argv) {
  port = atoi(argv[1]); int c = atoi(argv[2]); secs = atoi(argv[3]);
  t_end = now() + secs * 1000000000LL;
  if (c < 1 || c > 64) { fprintf(stderr, "CONNS: 1 to 64\n"); return 2; }
  pthread_t th[64]; rec r[64];
  for (int i = 0; i < c; i++) { r[i].cap = 2000000; r[i].n = 0; r[i].s = malloc(8 * r[i].cap); r[i].l = malloc(8 * r[i].cap); pthread_create(&th[i], 0, client, &r[i]); }
  FILE *f = fopen(argv[4], "w");
  for (int i = 0; i < c; i++) { pthread_join(th[i], 0); for (long j = 0; j < r[i].n; j++) fprintf(f, "%lld %lld\n", r[i].s[j], r[i].l[j]); }
  fclose(f); return 0;
}
