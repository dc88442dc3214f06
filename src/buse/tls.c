/* tls.c: TLS for libbuse's NBD connections (NBD_OPT_STARTTLS), with GnuTLS.
 *
 * A server's credentials (X.509 certificate and key, a CA to verify client
 * certificates, pre-shared keys) are loaded once by buse_server_set_tls()
 * and only read afterwards, so every connection thread may use them.  A
 * connection upgrades itself in its handshake thread (handshake.c, after
 * the ACK to STARTTLS): buse_tls_start() runs the TLS handshake on the
 * socket, bounded by the handshake's idle limit, and on success sets
 * conn->tls, after which the connection's bytes go through
 * buse_tls_read/writev (internal.h's conn_* functions).  Invariants: a
 * session is read by one thread at a time and written by one thread at a
 * time (recv_lock and send_lock in transmission), the model GnuTLS
 * documents as safe for one session shared by a reader and a writer; it
 * never renegotiates (a TLS 1.2 renegotiation request ends the
 * connection); it is ended by one thread, after every worker stopped.
 * Nothing here ever falls back to plaintext: a failed TLS handshake ends
 * the connection.
 */
#define BUSE_INTERNAL
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "internal.h"

/* TLS 1.3 first, 1.2 still accepted (doc/proto.md: implementations MUST
 * support 1.2; a client that speaks 1.3 gets 1.3, its downgrade
 * protection sees to that).  AEAD ciphers only, AES-GCM first, in our
 * order: a TLS 1.3 PSK is bound to SHA-256, which leaves AES-128-GCM and
 * ChaCha20 to choose from, and with the client's order (NORMAL: ChaCha20
 * first) nbdcopy of 1 GiB spent 2.5x the server CPU in nettle's ChaCha20
 * (measured).  With PSK only the ECDHE/DHE exchanges, which keep forward
 * secrecy (plain PSK would not). */
#define PRIORITY_CERT                                                          \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:"     \
    "+AES-128-GCM:+CHACHA20-POLY1305:%SERVER_PRECEDENCE"
#define PRIORITY_PSK ":+ECDHE-PSK:+DHE-PSK"

#define PSK_FILE_MAX (1u << 20) /* bytes of a PSK file */
#define PSK_KEY_MAX 512         /* bytes of one key */
#define SMALL_SEND 16384        /* writev below this: one TLS record */

struct psk_key {
    char *user;
    unsigned char *key;
    size_t len;
};

struct buse_tls_creds {
    gnutls_certificate_credentials_t x509; /* NULL: no certificates */
    gnutls_psk_server_credentials_t psk;   /* NULL: no PSK */
    gnutls_priority_t priority;
    int verify_peer;
    struct psk_key *keys;
    size_t nkeys;
};

struct buse_tls {
    gnutls_session_t s;
    char *identity; /* PSK username or client certificate DN, or NULL */
    int fd;
    int timed;                /* during the handshake, with a limit: */
    struct timespec deadline; /* reads stop then */
};

static void tls_err(int gerr, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void tls_err(int gerr, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    buse_err("%s: %s", msg, gnutls_strerror(gerr));
}

/* GnuTLS error codes as errno values for our callers. */
static int gnutls_to_errno(int gerr)
{
    switch (gerr) {
    case GNUTLS_E_AGAIN:
        return -EAGAIN; /* the socket's idle limit (SO_RCVTIMEO/SNDTIMEO) */
    case GNUTLS_E_TIMEDOUT:
        return -ETIMEDOUT;
    case GNUTLS_E_PREMATURE_TERMINATION:
    case GNUTLS_E_PUSH_ERROR:
    case GNUTLS_E_PULL_ERROR:
        return -ECONNRESET;
    case GNUTLS_E_MEMORY_ERROR:
        return -ENOMEM;
    case GNUTLS_E_FILE_ERROR:
        return -ENOENT;
    default:
        return -EPROTO;
    }
}

/* ---- credentials ---- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_err;
static void global_init(void)
{
    global_err = gnutls_global_init();
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Read path's "username:hexkey" lines (psktool's format) into creds. */
static int load_psk(struct buse_tls_creds *c, const char *path)
{
    FILE *f = fopen(path, "re");
    struct stat st;
    char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    int r = 0;
    if (!f || fstat(fileno(f), &st) < 0) {
        r = -errno;
        buse_err("%s: %s", path, strerror(-r));
        if (f)
            fclose(f);
        return r;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > PSK_FILE_MAX) {
        buse_err("%s: not a PSK file (a regular file of at most %u bytes)",
                 path, PSK_FILE_MAX);
        fclose(f);
        return -EINVAL;
    }
    if (st.st_mode & 077)
        buse_err("warning: %s: the pre-shared keys are readable by other "
                 "users (mode %03o; chmod 600 it)",
                 path, (unsigned)(st.st_mode & 0777));
    ssize_t n;
    while (r == 0 && (n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        char *colon = strchr(line, ':');
        const char *hex = colon ? colon + 1 : "";
        size_t hl = strlen(hex);
        if (!colon || colon == line || hl == 0 || hl % 2 ||
            hl / 2 > PSK_KEY_MAX) {
            buse_err("%s:%u: expected USERNAME:HEXKEY (as psktool writes "
                     "them)",
                     path, lineno);
            r = -EINVAL;
            break;
        }
        *colon = '\0';
        for (size_t i = 0; i < c->nkeys; i++)
            if (strcmp(c->keys[i].user, line) == 0) {
                buse_err("%s:%u: username \"%s\" appears twice", path, lineno,
                         line);
                r = -EINVAL;
            }
        if (r < 0)
            break;
        struct psk_key *v = realloc(c->keys, (c->nkeys + 1) * sizeof *v);
        if (!v) {
            r = -ENOMEM;
            break;
        }
        c->keys = v;
        struct psk_key *k = &c->keys[c->nkeys];
        k->len = hl / 2;
        k->user = strdup(line);
        k->key = malloc(k->len);
        if (!k->user || !k->key) {
            free(k->user);
            free(k->key);
            r = -ENOMEM;
            break;
        }
        c->nkeys++;
        for (size_t i = 0; i < k->len; i++) {
            int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                buse_err("%s:%u: the key of \"%s\" is not hexadecimal", path,
                         lineno, k->user);
                r = -EINVAL;
                break;
            }
            k->key[i] = (unsigned char)(hi << 4 | lo);
        }
    }
    if (line) {
        explicit_bzero(line, cap);
        free(line);
    }
    fclose(f);
    if (r == 0 && c->nkeys == 0) {
        buse_err("%s: no key in the file", path);
        r = -EINVAL;
    }
    return r;
}

/* GnuTLS asks for the key of username (a client's PSK identity). */
static int psk_lookup(gnutls_session_t s, const char *username,
                      gnutls_datum_t *key)
{
    const struct buse_tls_creds *c = gnutls_session_get_ptr(s);
    for (size_t i = 0; i < c->nkeys; i++) {
        if (strcmp(c->keys[i].user, username) != 0)
            continue;
        key->data = gnutls_malloc(c->keys[i].len);
        if (!key->data)
            return -1;
        memcpy(key->data, c->keys[i].key, c->keys[i].len);
        key->size = (unsigned)c->keys[i].len;
        return 0;
    }
    buse_debug("TLS: unknown PSK username \"%s\"", username);
    return -1;
}

static int file_ok(const char *path, int required)
{
    if (access(path, R_OK) == 0)
        return 1;
    if (!required && errno == ENOENT)
        return 0;
    int r = -errno;
    buse_err("%s: %s", path, strerror(-r));
    return r;
}

/* A server certificate that is expired or not yet valid is refused by
 * every client: say so now rather than at each handshake. */
static void check_validity(gnutls_certificate_credentials_t x509,
                           const char *path)
{
    gnutls_datum_t der;
    gnutls_x509_crt_t crt;
    if (gnutls_certificate_get_crt_raw(x509, 0, 0, &der) < 0)
        return;
    if (gnutls_x509_crt_init(&crt) < 0)
        return;
    if (gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER) == 0) {
        time_t now = time(NULL);
        if (gnutls_x509_crt_get_expiration_time(crt) < now)
            buse_err("warning: %s: the certificate has expired: clients "
                     "will refuse it",
                     path);
        else if (gnutls_x509_crt_get_activation_time(crt) > now)
            buse_err("warning: %s: the certificate is not valid yet: "
                     "clients will refuse it",
                     path);
    }
    gnutls_x509_crt_deinit(crt);
}

static int load_x509(struct buse_tls_creds *c, const char *dir)
{
    char ca[4096], crl[4096], cert[4096], key[4096];
    int r;
    if (snprintf(ca, sizeof ca, "%s/ca-cert.pem", dir) >= (int)sizeof ca ||
        snprintf(crl, sizeof crl, "%s/ca-crl.pem", dir) >= (int)sizeof crl ||
        snprintf(cert, sizeof cert, "%s/server-cert.pem", dir) >=
            (int)sizeof cert ||
        snprintf(key, sizeof key, "%s/server-key.pem", dir) >=
            (int)sizeof key) {
        buse_err("%s: path too long", dir);
        return -ENAMETOOLONG;
    }
    if ((r = file_ok(cert, 1)) < 0 || (r = file_ok(key, 1)) < 0)
        return r;
    int have_ca = file_ok(ca, c->verify_peer);
    if (have_ca < 0)
        return have_ca;
    int have_crl = file_ok(crl, 0);
    if (have_crl < 0)
        return have_crl;
    if ((r = gnutls_certificate_allocate_credentials(&c->x509)) < 0) {
        tls_err(r, "%s: certificate credentials", dir);
        return -ENOMEM;
    }
    if (have_ca) {
        r = gnutls_certificate_set_x509_trust_file(c->x509, ca,
                                                   GNUTLS_X509_FMT_PEM);
        if (r <= 0) {
            if (r == 0)
                buse_err("%s: no certificate in the file", ca);
            else
                tls_err(r, "%s", ca);
            return -EINVAL;
        }
    }
    if (have_crl) {
        r = gnutls_certificate_set_x509_crl_file(c->x509, crl,
                                                 GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            tls_err(r, "%s", crl);
            return -EINVAL;
        }
    }
    r = gnutls_certificate_set_x509_key_file(c->x509, cert, key,
                                             GNUTLS_X509_FMT_PEM);
    if (r < 0) {
        tls_err(r, "%s and %s", cert, key);
        return -EINVAL;
    }
    check_validity(c->x509, cert);
    gnutls_certificate_set_known_dh_params(c->x509, GNUTLS_SEC_PARAM_MEDIUM);
    return 0;
}

void buse_tls_creds_free(struct buse_tls_creds *c)
{
    if (!c)
        return;
    if (c->x509)
        gnutls_certificate_free_credentials(c->x509);
    if (c->psk)
        gnutls_psk_free_server_credentials(c->psk);
    if (c->priority)
        gnutls_priority_deinit(c->priority);
    for (size_t i = 0; i < c->nkeys; i++) {
        explicit_bzero(c->keys[i].key, c->keys[i].len);
        free(c->keys[i].key);
        free(c->keys[i].user);
    }
    free(c->keys);
    free(c);
}

int buse_server_set_tls_sized(struct buse_server *srv,
                              const struct buse_tls_options *opt,
                              size_t opt_size)
{
    struct buse_tls_options o = {0};
    struct buse_tls_creds *c;
    int r;
    if (!opt) {
        buse_err("buse_server_set_tls: no options");
        return -EINVAL;
    }
    memcpy(&o, opt, opt_size < sizeof o ? opt_size : sizeof o);
    if (atomic_load(&srv->running)) {
        buse_err("buse_server_set_tls: the server is already running");
        return -EBUSY;
    }
    if (o.mode != BUSE_TLS_OFF && o.mode != BUSE_TLS_ON &&
        o.mode != BUSE_TLS_REQUIRE) {
        buse_err("buse_server_set_tls: unknown mode %d", o.mode);
        return -EINVAL;
    }
    if (o.mode == BUSE_TLS_OFF) {
        buse_tls_creds_free(srv->tls_creds);
        srv->tls_creds = NULL;
        srv->tls_mode = BUSE_TLS_OFF;
        return 0;
    }
    if (!o.certificates && !o.psk_file) {
        buse_err("TLS needs certificates (a directory with server-cert.pem "
                 "and server-key.pem) or a PSK file");
        return -EINVAL;
    }
    if (o.verify_peer && !o.certificates) {
        buse_err("TLS: verifying client certificates needs a certificate "
                 "directory with ca-cert.pem");
        return -EINVAL;
    }
    pthread_once(&global_once, global_init);
    if (global_err < 0) {
        tls_err(global_err, "GnuTLS initialisation");
        return -EIO;
    }
    if (!(c = calloc(1, sizeof *c)))
        return -ENOMEM;
    c->verify_peer = o.verify_peer;
    r = 0;
    if (o.certificates)
        r = load_x509(c, o.certificates);
    if (r == 0 && o.psk_file) {
        r = load_psk(c, o.psk_file);
        if (r == 0 && (r = gnutls_psk_allocate_server_credentials(&c->psk))) {
            tls_err(r, "PSK credentials");
            r = -ENOMEM;
        }
        if (r == 0) {
            gnutls_psk_set_server_credentials_function(c->psk, psk_lookup);
            gnutls_psk_set_server_known_dh_params(c->psk,
                                                  GNUTLS_SEC_PARAM_MEDIUM);
        }
    }
    if (r == 0) {
        char prio[512];
        const char *err = NULL;
        if (o.priority)
            snprintf(prio, sizeof prio, "%s", o.priority);
        else
            snprintf(prio, sizeof prio, "%s%s", PRIORITY_CERT,
                     o.psk_file ? PRIORITY_PSK : "");
        int g = gnutls_priority_init(&c->priority, prio, &err);
        if (g < 0) {
            tls_err(g, "TLS priority \"%s\" (at \"%s\")", prio, err ? err : "");
            r = -EINVAL;
        }
    }
    if (r < 0) {
        buse_tls_creds_free(c);
        return r;
    }
    buse_tls_creds_free(srv->tls_creds);
    srv->tls_creds = c;
    srv->tls_mode = o.mode;
    buse_debug("TLS %s with%s%s%s",
               o.mode == BUSE_TLS_REQUIRE ? "required" : "offered",
               o.certificates ? " X.509 certificates" : "",
               o.certificates && o.psk_file ? " and" : "",
               o.psk_file ? " pre-shared keys" : "");
    return 0;
}

/* ---- sessions ---- */

/* Handshake failures are caused by clients, which can cause many: one
 * line a second at most, with a count of those not printed. */
static void report_failure(int fd, const char *what, const char *detail)
{
    static atomic_long last;
    static atomic_int suppressed;
    long now = (long)time(NULL);
    long prev = atomic_load(&last);
    if (now == prev || !atomic_compare_exchange_strong(&last, &prev, now)) {
        atomic_fetch_add(&suppressed, 1);
        return;
    }
    char peer[INET6_ADDRSTRLEN + 16] = "a Unix socket client";
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    if (getpeername(fd, (struct sockaddr *)&sa, &sl) == 0) {
        char a[INET6_ADDRSTRLEN] = "?";
        if (sa.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&sa;
            inet_ntop(AF_INET, &in->sin_addr, a, sizeof a);
            snprintf(peer, sizeof peer, "%s:%u", a, ntohs(in->sin_port));
        } else if (sa.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&sa;
            inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof a);
            snprintf(peer, sizeof peer, "[%s]:%u", a, ntohs(in6->sin6_port));
        }
    }
    int n = atomic_exchange(&suppressed, 0);
    if (n)
        buse_err("TLS handshake with %s failed: %s: %s (and %d more "
                 "failures not shown)",
                 peer, what, detail, n);
    else
        buse_err("TLS handshake with %s failed: %s: %s", peer, what, detail);
}

/* Why a handshake failed, for the operator: GnuTLS's message, and for a
 * refused client certificate what was wrong with it. */
static void handshake_failed(int fd, gnutls_session_t s, int gerr)
{
    gnutls_datum_t why = {0};
    if (gerr == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR &&
        gnutls_certificate_verification_status_print(
            gnutls_session_get_verify_cert_status(s), GNUTLS_CRT_X509, &why,
            0) == 0) {
        char *m = (char *)why.data;
        size_t n = strlen(m);
        while (n > 0 && m[n - 1] == ' ')
            m[--n] = '\0';
        report_failure(fd, "client certificate", m);
        gnutls_free(why.data);
        return;
    }
    report_failure(fd, "handshake", gnutls_strerror(gerr));
}

/* The identity a client proved: its PSK username, or with verify_peer
 * the subject DN of its (verified) certificate.  NULL if none. */
static char *peer_identity(gnutls_session_t s, int verify_peer)
{
    if (gnutls_auth_get_type(s) == GNUTLS_CRD_PSK) {
        const char *u = gnutls_psk_server_get_username(s);
        return u && *u ? strdup(u) : NULL;
    }
    if (!verify_peer)
        return NULL;
    unsigned n = 0;
    const gnutls_datum_t *certs = gnutls_certificate_get_peers(s, &n);
    gnutls_x509_crt_t crt;
    gnutls_datum_t dn = {0};
    char *id = NULL;
    if (!certs || n == 0 || gnutls_x509_crt_init(&crt) < 0)
        return NULL;
    if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0 &&
        gnutls_x509_crt_get_dn3(crt, &dn, 0) == 0) {
        id = strndup((const char *)dn.data, dn.size);
        gnutls_free(dn.data);
    }
    gnutls_x509_crt_deinit(crt);
    return id;
}

static int ms_left(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (deadline->tv_sec - now.tv_sec) * 1000 +
              (deadline->tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : ms > INT32_MAX ? INT32_MAX : (int)ms;
}

/* GnuTLS reads the socket through here: a plain recv(), except that during
 * the TLS handshake every read also stops at the handshake's deadline.
 * (GnuTLS's own handshake timeout did not stop a client that trickles its
 * ClientHello a byte at a time: measured, still connected after 10 s with
 * a 1 s limit.)  EAGAIN is what the socket's own idle limit returns too;
 * both end the handshake (gnutls_to_errno). */
static ssize_t tls_pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
    struct buse_tls *t = p;
    if (t->timed) {
        struct pollfd pfd = {.fd = t->fd, .events = POLLIN};
        int left = ms_left(&t->deadline), r;
        if (left == 0 || (r = poll(&pfd, 1, left)) == 0) {
            errno = EAGAIN;
            return -1;
        }
        if (r < 0)
            return -1;
    }
    return recv(t->fd, buf, len, 0);
}

static int tls_pull_timeout(gnutls_transport_ptr_t p, unsigned ms)
{
    struct buse_tls *t = p;
    struct pollfd pfd = {.fd = t->fd, .events = POLLIN};
    return poll(&pfd, 1,
                ms == GNUTLS_INDEFINITE_TIMEOUT
                    ? -1
                    : (int)(ms > INT32_MAX ? INT32_MAX : ms));
}

int buse_tls_start(struct buse_conn *conn)
{
    struct buse_tls_creds *c = conn->srv->tls_creds;
    struct buse_tls *t = calloc(1, sizeof *t);
    int r;
    if (!t)
        return -ENOMEM;
    r = gnutls_init(&t->s,
                    GNUTLS_SERVER | GNUTLS_NO_SIGNAL | GNUTLS_NO_TICKETS);
    if (r < 0) {
        free(t);
        return gnutls_to_errno(r);
    }
    gnutls_session_set_ptr(t->s, c);
    r = gnutls_priority_set(t->s, c->priority);
    if (r == 0 && c->x509)
        r = gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE, c->x509);
    if (r == 0 && c->psk)
        r = gnutls_credentials_set(t->s, GNUTLS_CRD_PSK, c->psk);
    if (r == 0 && c->verify_peer && c->x509) {
        gnutls_certificate_server_set_request(t->s, GNUTLS_CERT_REQUIRE);
        gnutls_session_set_verify_cert(t->s, NULL, 0);
    }
    if (r < 0) {
        tls_err(r, "TLS session setup");
        gnutls_deinit(t->s);
        free(t);
        return gnutls_to_errno(r);
    }
    /* Reads through tls_pull, writes straight to the socket. */
    t->fd = conn->fd;
    gnutls_transport_set_ptr2(t->s, t,
                              (gnutls_transport_ptr_t)(intptr_t)conn->fd);
    gnutls_transport_set_pull_function(t->s, tls_pull);
    gnutls_transport_set_pull_timeout_function(t->s, tls_pull_timeout);
    /* The handshake's idle limit bounds each read (SO_RCVTIMEO: a silent
     * client ends with GNUTLS_E_AGAIN, never retried here) and, as a
     * deadline, the whole TLS handshake: a client trickling bytes cannot
     * keep it open longer. */
    if (conn->handshake_limit > 0) {
        t->timed = 1;
        clock_gettime(CLOCK_MONOTONIC, &t->deadline);
        t->deadline.tv_sec += conn->handshake_limit;
    }
    do {
        r = gnutls_handshake(t->s);
    } while (r == GNUTLS_E_INTERRUPTED ||
             (r < 0 && r != GNUTLS_E_AGAIN && !gnutls_error_is_fatal(r)));
    if (r < 0) {
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_TIMEDOUT)
            buse_debug("TLS handshake: client idle or too slow");
        else if (r != GNUTLS_E_PREMATURE_TERMINATION)
            handshake_failed(conn->fd, t->s, r);
        gnutls_deinit(t->s);
        free(t);
        return gnutls_to_errno(r);
    }
    t->timed = 0; /* from now on, reads are as plain as recv() */
    t->identity = peer_identity(t->s, c->verify_peer);
    if (buse_verbose) {
        char *desc = gnutls_session_get_desc(t->s);
        int psk = gnutls_auth_get_type(t->s) == GNUTLS_CRD_PSK;
        gnutls_group_t g = gnutls_group_get(t->s);
        buse_debug("TLS: %s%s%s%s, client identity %s%s%s", desc ? desc : "?",
                   psk ? " with PSK" : "", psk && g ? " and ECDHE " : "",
                   psk && g ? gnutls_group_get_name(g) : "",
                   t->identity ? "\"" : "", t->identity ? t->identity : "none",
                   t->identity ? "\"" : "");
        gnutls_free(desc);
    }
    conn->tls = t;
    return 0;
}

const char *buse_tls_identity(const struct buse_tls *t)
{
    return t ? t->identity : NULL;
}

void buse_tls_end(struct buse_conn *conn)
{
    struct buse_tls *t = conn->tls;
    if (!t)
        return;
    /* close_notify (doc/proto.md: on NBD_CMD_DISC the server closes down
     * the TLS session, then the connection), but never wait long for a
     * client that does not read. */
    struct timeval tv = {.tv_sec = 1};
    setsockopt(conn->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    gnutls_bye(t->s, GNUTLS_SHUT_WR);
    gnutls_deinit(t->s);
    free(t->identity);
    free(t);
    conn->tls = NULL;
}

int buse_tls_read(struct buse_tls *t, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = gnutls_record_recv(t->s, p, len);
        if (r > 0) {
            p += r;
            len -= (size_t)r;
            continue;
        }
        if (r == 0)
            return -ECONNRESET; /* close_notify */
        if (r == GNUTLS_E_INTERRUPTED)
            continue;
        if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_PREMATURE_TERMINATION)
            buse_debug("TLS: receive: %s", gnutls_strerror((int)r));
        return gnutls_to_errno((int)r);
    }
    return 0;
}

static int send_all(gnutls_session_t s, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t r = gnutls_record_send(s, p, len);
        if (r > 0) {
            p += r;
            len -= (size_t)r;
            continue;
        }
        if (r == GNUTLS_E_INTERRUPTED) /* again with the same data */
            continue;
        return gnutls_to_errno((int)r);
    }
    return 0;
}

int buse_tls_writev(struct buse_tls *t, struct iovec *iov, int iovcnt)
{
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (iovcnt > 1 && total <= SMALL_SEND) {
        /* A reply header and a small payload: one record, one send. */
        char buf[SMALL_SEND];
        size_t off = 0;
        for (int i = 0; i < iovcnt; i++) {
            memcpy(buf + off, iov[i].iov_base, iov[i].iov_len);
            off += iov[i].iov_len;
        }
        return send_all(t->s, buf, total);
    }
    for (int i = 0; i < iovcnt; i++) {
        int r = send_all(t->s, iov[i].iov_base, iov[i].iov_len);
        if (r < 0)
            return r;
    }
    return 0;
}
